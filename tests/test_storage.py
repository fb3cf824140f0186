"""Safe files (closure.storage): atomic writes, locks, stale temp files, SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from closure import storage
from closure.errors import ClosureError

ROOT = Path(__file__).resolve().parents[1]


def _temps(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# --------------------------------------------------------------------------- atomic writes
def test_write_text_bytes_json_round_trip(tmp_path):
    storage.write_text(tmp_path / "a" / "t.txt", "héllo\n")
    storage.write_bytes(tmp_path / "b.bin", b"\x00\x01")
    storage.write_json(tmp_path / "c.json", {"x": 1})
    assert (tmp_path / "a" / "t.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "c.json").read_text() == '{"x": 1}\n'
    assert not _temps(tmp_path)


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "out.nc"
    path.write_text("old")

    def writer(tmp):
        tmp.write_text("half")
        raise KeyboardInterrupt  # Ctrl-C / SIGTERM in the middle of a write

    with pytest.raises(KeyboardInterrupt):
        storage.write_with(path, writer)
    assert path.read_text() == "old" and not _temps(tmp_path)


def test_temp_name_carries_host_and_pid(tmp_path):
    tmp = storage.temp_name(tmp_path / "data.nc")
    assert tmp.parent == tmp_path and tmp.name.startswith(".data.nc.") and tmp.name.endswith(".tmp")
    assert f"_{os.getpid()}." in tmp.name


def test_figure_and_torch_save_are_atomic(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    storage.save_figure(fig, tmp_path / "f.png", dpi=50)
    plt.close(fig)
    assert (tmp_path / "f.png").read_bytes()[:4] == b"\x89PNG"
    storage.torch_save({"w": torch.ones(2)}, tmp_path / "m.pt")
    assert torch.equal(torch.load(tmp_path / "m.pt", weights_only=True)["w"], torch.ones(2))
    assert not _temps(tmp_path)


# --------------------------------------------------------------------------- stale temp files
def test_stale_temps_of_dead_processes_are_removed(tmp_path):
    out = tmp_path / "data.nc"
    dead = storage.temp_name(out).name.replace(f"_{os.getpid()}.", f"_{_dead_pid()}.")
    live = storage.temp_name(out)
    (tmp_path / dead).write_text("x")
    live.write_text("y")  # ours: a write in progress
    other = tmp_path / ".other.nc.somehost_1.0123abcd.tmp"
    other.write_text("z")  # another host's: never touched
    with storage.output_lock(out):
        pass
    assert not (tmp_path / dead).exists() and live.exists() and other.exists()


def test_stale_temps_inside_an_output_folder_are_removed(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    stale = run / storage.temp_name(run / "model.pt").name.replace(f"_{os.getpid()}.", f"_{_dead_pid()}.")
    stale.write_text("x")
    assert storage.remove_stale_temps(run) == [stale] and not stale.exists()


# --------------------------------------------------------------------------- locks
_HOLD = textwrap.dedent("""
    import sys, time
    from closure import storage
    with storage.output_lock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
""")


def test_second_writer_fails_fast_naming_the_holder(tmp_path):
    out = tmp_path / "data.nc"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(out)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "locked"
        start = time.perf_counter()
        with pytest.raises(ClosureError, match=rf"in use by another closure process \(pid {holder.pid} on "):
            with storage.output_lock(out):
                pass
        assert time.perf_counter() - start < 1.0
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    with storage.output_lock(out):  # a killed holder leaves no lock behind
        with storage.output_lock(out):  # reentrant within a process
            pass


def test_refuse_input_as_output(tmp_path):
    data = tmp_path / "d.nc"
    data.write_text("x")
    link = tmp_path / "link.nc"
    link.symlink_to(data)
    with pytest.raises(ClosureError, match="also an input"):
        storage.refuse_input_as_output(link, [tmp_path / "other.nc", data])
    storage.refuse_input_as_output(tmp_path / "new.nc", [data])


# --------------------------------------------------------------------------- signals
def test_sigterm_is_one_line_and_status_143(tmp_path, tiny_config):
    """SIGTERM during a generate: one line, exit 143, no temp file left, and a re-run finishes."""
    tiny_config["dns"].update(samples=400, trajectories=1, batch_size=1)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config))
    out = tmp_path / "d.nc"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "closure", "generate", str(cfg), "-o", str(out)],
                            stderr=subprocess.PIPE, text=True, env=env)
    for line in proc.stderr:  # wait until it is working
        if "generate" in line:
            break
    time.sleep(0.3)
    proc.send_signal(signal.SIGTERM)
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 143, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert lines == ["closure: terminated (SIGTERM)"], err
    assert not _temps(tmp_path) and not out.exists()
