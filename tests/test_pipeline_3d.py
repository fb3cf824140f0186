"""`closure pipeline` end to end in 3D on a tiny case: generate -> train (3D CNN) -> LES
(none, Smagorinsky, dynamic Smagorinsky, learned) -> evaluate (3D spectra, PDFs of velocity
and of the longitudinal velocity gradients, decorrelation)."""

from __future__ import annotations

import json

import yaml

from closure.cli import main

TINY = {
    "seed": 0, "device": "cpu", "dtype": "float32",
    "system": {"equation": "navier_stokes_3d", "viscosity": 2.0e-2,
               "forcing": {"type": "linear", "coefficient": 0.2, "wavenumber": 2}},
    "initial": {"peak_wavenumber": 2.0, "energy": 0.5},
    "dns": {"resolution": 16, "dt": 0.05, "spinup_time": 0.25, "sample_interval": 0.1, "samples": 4,
            "trajectories": 3, "batch_size": 3},
    "les": {"resolution": 8, "filter": {"type": "gaussian", "width": 2.0}},
    "data": {"keep_dns": False, "validation_fraction": 0.3, "test_fraction": 0.3},
    "model": {"type": "cnn", "stencil": 3, "hidden": [6, 6], "gammas": [1.0, 0.5]},
    "train": {"optimizer": "adam", "lr": 0.01, "epochs": 1, "batch_size": 512},
    "run": {"time": 0.3, "dt": 0.05, "models": ["none", "smagorinsky", "leith", "dynamic_smagorinsky", "learned"]},
}


def test_pipeline_3d_end_to_end(tmp_path, capsys):
    config = tmp_path / "tiny3d.yaml"
    config.write_text(yaml.safe_dump(TINY))
    out = tmp_path / "out"
    assert main(["pipeline", str(config), "-o", str(out)]) == 0
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    assert set(metrics) >= {"none", "smagorinsky", "leith", "dynamic_smagorinsky", "learned"}
    for name, m in metrics.items():
        assert m["blowups"] == 0, name
        assert m["spectrum_error"] >= 0 and 0 <= m["gradient_pdf_distance"] <= 1, name
    # the plain-solver ladder runs in 3D too (from the DNS start and from the filtered start)
    ladder = [k for k in metrics if k.startswith("plain@")]
    assert any(k.endswith(":filtered") for k in ladder) and any(not k.endswith(":filtered") for k in ladder)
    # the closures act: the Smagorinsky LES differs from the plain one
    assert metrics["smagorinsky"]["spectrum_error"] != metrics["none"]["spectrum_error"]
    for figure in ("spectra.png", "pdf.png", "snapshots.png", "report.md"):
        assert (out / "report" / figure).is_file()
