"""Solver speed: ms per time step of our solvers next to two peers, in one run.

    python benchmarks/solver_speed.py [--device cpu|cuda] [--quick] [--threads N]
                                      [--repeats R] [--write]

Problem (the same for every code): Kolmogorov flow on [0, 2 pi)^2 (viscosity
1e-3, linear drag 0.1, velocity forcing (sin 4y, 0)), a random smooth initial
vorticity (``solvers.random_vorticity``, 2/3-truncated), dt = 1e-3, batch 1 at
128^2 .. 1024^2 (2048^2 on CUDA), float32 and float64, and a batched 16 x 128^2
case; Burgers (viscosity 1e-2, no forcing) with a batch of 64 x n = 4096.

Codes:

- ours: ``solvers`` ETDRK4 (the default) and CN-RK4, through the public
  ``equation.simulate`` (its non-finite check included);
- jax-cfd 0.2.1 (``pip install -e .[bench]``): ``jax_cfd.spectral.equations.
  NavierStokes2D`` + ``time_stepping.crank_nicolson_rk4``, jit-compiled
  (compile time excluded), ``block_until_ready``; batches through ``jax.vmap``.
  For Burgers it is jax-cfd's ``BurgersEquation`` (3/2-rule padding, 3 FFTs a
  stage: a related, not identical, algorithm). Skipped with a note if absent;
- numpy: a plain ``numpy.fft`` implementation of the same algorithms (Basdevant
  4-FFT advection, 2/3 rule, ETDRK4 with the Kassam-Trefethen coefficients, and
  CN-RK4), written below; single-threaded (numpy's pocketfft).

Each time is the best (minimum) over ``--repeats`` rounds of a run of several
steps, after a warm-up; the codes of a case are timed round-robin (round r of
each, then r + 1), so that their ratios hold under a changing load (on a shared
machine the best round is the one least disturbed by other processes). The
"FFT floor" times the FFT calls of our ETDRK4 step alone (the same transforms
on arrays of the same shapes, 4 stages), in the same rounds: what is left
between it and the step is the elementwise work. Ratios < 1 mean ours is faster. The run also checks that the
codes solve the same problem: ours vs numpy (same scheme) and ours CN-RK4 vs
jax-cfd CN-RK4 after a few float64 steps (relative difference of the state).
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (cuda: also 2048^2 and a roofline column)")
    p.add_argument("--quick", action="store_true", help="small grids and few repeats (a smoke run)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (torch.set_num_threads); 1 also makes XLA single-threaded. "
                        "Default: torch's default, capped at the number of cores")
    p.add_argument("--repeats", type=int, default=None, help="timed rounds per case (default 9, quick 3)")
    p.add_argument("--dt", type=float, default=1e-3)
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="NS2D grid sizes to time (default 128 256 512 1024; quick 128 256)")
    p.add_argument("--dtypes", nargs="+", default=["float32", "float64"], choices=["float32", "float64"])
    p.add_argument("--no-batched", action="store_true", help="skip the batched 16 x 128^2 and Burgers cases")
    p.add_argument("--no-jax", action="store_true", help="skip the jax-cfd peer")
    p.add_argument("--no-3d", action="store_true", help="skip the NS3D cases")
    p.add_argument("--sizes3", type=int, nargs="+", default=None,
                   help="NS3D grid sizes (default 64 128; 256 512 added on CUDA in float32; quick 32)")
    p.add_argument("--no-numpy", action="store_true", help="skip the numpy peer")
    p.add_argument("--write", action="store_true", help="write the tables into docs/performance.md (## Solvers)")
    return p.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.threads == 1:  # must precede the jax import
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()

import numpy as np  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(ROOT))
import solvers  # noqa: E402

NU, DRAG, KF, NU_BURGERS = 1e-3, 0.1, 4, 1e-2
NU_3D, A_3D, KF_3D = 1e-2, 0.2, 2.0  # NS3D: forced isotropic turbulence (linear forcing on |m| <= 2)


# ============================================================================ numpy peer
def _etdrk4_coefficients_np(lin: np.ndarray, dt: float, m: int = 32) -> dict:
    """Kassam-Trefethen contour evaluation (float64), as in the ETDRK4 literature."""
    z = (dt * lin.astype(np.float64))[..., None]
    r = np.exp(1j * np.pi * (np.arange(1, m + 1) - 0.5) / m)
    w = z + r
    ew = np.exp(w)
    mean = lambda a: a.mean(axis=-1).real  # noqa: E731
    return {
        "E": np.exp(dt * lin), "E2": np.exp(dt * lin / 2),
        "Q": dt * mean((np.exp(w / 2) - 1) / w),
        "f1": dt * mean((-4 - w + ew * (4 - 3 * w + w ** 2)) / w ** 3),
        "f2": dt * mean((2 + w + ew * (w - 2)) / w ** 3),
        "f3": dt * mean((-4 - 3 * w - w ** 2 + ew * (4 - w)) / w ** 3),
    }


_CK = ((0.0, 0.1496590219993, 0.3704009573644, 0.6222557631345, 0.9582821306748, 1.0),
       (0.0, -0.4178904745, -1.192151694643, -1.697784692471, -1.514183444257),
       (0.1496590219993, 0.3792103129999, 0.8229550293869, 0.6994504559488, 0.1530572479681))


class NumpyPeer:
    """A plain numpy.fft pseudo-spectral solver: ``w_t = L w + N(w) + f`` (batched, spectral state)."""

    def __init__(self, ndim: int, n: int, dtype, dt: float):
        self.ndim, self.n, self.dtype, self.dt = ndim, n, np.dtype(dtype), dt
        kc = (n - 1) // 3  # the 2/3 rule's cutoff (3 kc < n)
        mx = np.fft.rfftfreq(n, 1.0 / n)
        if ndim == 3:
            m = np.fft.fftfreq(n, 1.0 / n)
            ks = (mx[None, None, :], m[None, :, None], m[:, None, None])
            k2 = sum(k ** 2 for k in ks)
            mask = np.ones_like(k2)
            for k in ks:
                mask = mask * (np.abs(k) <= kc)
            self.k3 = tuple(k.astype(self.dtype) for k in ks)
            self.ik3 = tuple((1j * np.where(np.abs(k) == n // 2, 0.0, k)).astype(self._cdtype) for k in ks)
            self.inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0).astype(self.dtype)
            self.mask = mask.astype(self.dtype)
            no_mean = mask.copy()
            no_mean[0, 0, 0] = 0.0
            self.mask_no_mean = no_mean.astype(self.dtype)
            self.forcing = None
            lin = -NU_3D * k2 + A_3D * ((k2 > 0) & (k2 <= KF_3D ** 2 + 1e-9))
        elif ndim == 2:
            my = np.fft.fftfreq(n, 1.0 / n)[:, None]
            mx = mx[None, :]
            k2 = mx ** 2 + my ** 2
            mask = ((np.abs(mx) <= kc) & (np.abs(my) <= kc)).astype(np.float64)
            inv = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
            ikx = 1j * np.where(np.abs(mx) == n // 2, 0.0, mx)
            iky = 1j * np.where(np.abs(my) == n // 2, 0.0, my)
            self.vel = (iky * inv * mask, -ikx * inv * mask)
            self.adv = ((mx ** 2 - my ** 2) * mask, mx * my * mask)
            y = np.arange(n) * 2 * np.pi / n
            f = np.broadcast_to((-KF * np.cos(KF * y))[:, None], (n, n))
            self.forcing = np.fft.rfft2(f).astype(self._cdtype)
            lin = -NU * k2 - DRAG
        else:
            mask = (np.abs(mx) <= kc).astype(np.float64)
            self.trunc = mask
            self.flux = -0.5j * np.where(mx == n // 2, 0.0, mx) * mask
            self.forcing = None
            lin = -NU_BURGERS * mx ** 2
        if ndim == 3:
            self.vel = self.adv = None
        else:
            self.vel = tuple(v.astype(self._cdtype) for v in self.vel) if ndim == 2 else None
            self.adv = tuple(a.astype(self.dtype) for a in self.adv) if ndim == 2 else None
        if ndim == 1:
            self.trunc = self.trunc.astype(self.dtype)
            self.flux = self.flux.astype(self._cdtype)
        c = _etdrk4_coefficients_np(lin, dt)
        self.c = {k: v.astype(self.dtype) for k, v in c.items()}
        self.cn = []
        for k in range(5):
            mu = 0.5 * dt * (_CK[0][k + 1] - _CK[0][k])
            self.cn.append((_CK[1][k], ((1 + mu * lin) / (1 - mu * lin)).astype(self.dtype),
                            (_CK[2][k] * dt / (1 - mu * lin)).astype(self.dtype)))

    @property
    def _cdtype(self):
        return np.complex64 if self.dtype == np.float32 else np.complex128

    def to_spectral(self, w):
        if self.ndim == 3:
            return np.fft.rfftn(w, axes=(-3, -2, -1))
        return np.fft.rfft2(w) if self.ndim == 2 else np.fft.rfft(w)

    def to_physical(self, w_hat):
        if self.ndim == 3:
            return np.fft.irfftn(w_hat, s=(self.n,) * 3, axes=(-3, -2, -1))
        return (np.fft.irfft2(w_hat, s=(self.n, self.n)) if self.ndim == 2
                else np.fft.irfft(w_hat, n=self.n))

    def F3(self, u_hat):
        """NS3D: the Leray projection of the 2/3-truncated ``u x omega`` (rotational form)."""
        (ikx, iky, ikz), (kx, ky, kz) = self.ik3, self.k3
        u_hat = u_hat * self.mask
        ux, uy, uz = u_hat[:, 0], u_hat[:, 1], u_hat[:, 2]
        om = np.stack([iky * uz - ikz * uy, ikz * ux - ikx * uz, ikx * uy - iky * ux], axis=1)
        u, o = self.to_physical(u_hat), self.to_physical(om)
        c = self.to_spectral(np.cross(u, o, axis=1))
        kc = (kx * c[:, 0] + ky * c[:, 1] + kz * c[:, 2]) * self.inv
        return np.stack([(c[:, i] - k * kc) * self.mask_no_mean for i, k in enumerate(self.k3)], axis=1)

    def F(self, w_hat):
        if self.ndim == 3:
            return self.F3(w_hat)
        if self.ndim == 1:
            u = np.fft.irfft(self.trunc * w_hat, n=self.n)
            return self.flux * np.fft.rfft(u * u)
        s = (self.n, self.n)
        u = np.fft.irfft2(self.vel[0] * w_hat, s=s)
        v = np.fft.irfft2(self.vel[1] * w_hat, s=s)
        out = self.adv[0] * np.fft.rfft2(u * v) + self.adv[1] * np.fft.rfft2(v * v - u * u)
        return out + self.forcing

    def etdrk4(self, w):
        c, F = self.c, self.F
        Nw = F(w)
        E2w = c["E2"] * w
        a = E2w + c["Q"] * Nw
        Na = F(a)
        b = E2w + c["Q"] * Na
        Nb = F(b)
        cc = c["E2"] * a + c["Q"] * (2 * Nb - Nw)
        Nc = F(cc)
        return c["E"] * w + c["f1"] * Nw + 2 * c["f2"] * (Na + Nb) + c["f3"] * Nc

    def cnrk4(self, w):
        h = None
        for beta, A, B in self.cn:
            Fw = self.F(w)
            h = Fw if h is None else Fw + beta * h
            w = A * w + B * h
        return w


# ============================================================================ jax-cfd peer
def import_jax_cfd():
    try:
        import jax
        import jax_cfd.base as cfd
        from jax_cfd.spectral import equations as jequations
        from jax_cfd.spectral import time_stepping as jstepping
        import jax_cfd
    except Exception as exc:  # noqa: BLE001 (absent or broken: skip with a note)
        return None, f"jax-cfd not available ({type(exc).__name__}: {exc}); install with pip install -e .[bench]"
    return (jax, cfd, jequations, jstepping, jax_cfd), None


class JaxPeer:
    """jax-cfd's spectral solver with crank_nicolson_rk4, jit-compiled (vmapped over a batch)."""

    def __init__(self, mods, ndim: int, n: int, dtype, dt: float, batch: int):
        jax, cfd, jeq, jst, _ = mods
        self.jax = jax
        x64 = dtype == torch.float64
        jax.config.update("jax_enable_x64", x64)
        domain = ((0, 2 * math.pi),) * ndim
        grid = cfd.grids.Grid((n,) * ndim, domain=domain)
        if ndim == 2:
            def forcing_fn(g):
                return cfd.forcings.kolmogorov_forcing(g, k=KF, offsets=((0, 0), (0, 0)))
            eq = jeq.NavierStokes2D(NU, grid, drag=DRAG, smooth=True, forcing_fn=forcing_fn)
        else:
            eq = jeq.BurgersEquation(NU_BURGERS, grid)
        step = jst.crank_nicolson_rk4(eq, dt)
        self.ndim = ndim
        self.step = jax.jit(step if batch == 1 else jax.vmap(step))
        self.batch = batch

    def initial(self, state: torch.Tensor):
        """jax-cfd's spectral state from ours: jax-cfd indexes 2D fields [x, y]."""
        jnp = self.jax.numpy
        a = state.detach().cpu().numpy()
        if self.ndim == 2:
            a = np.swapaxes(a, -1, -2)
            w = jnp.fft.rfftn(jnp.asarray(a), axes=(-2, -1))
            return w[0] if self.batch == 1 else w
        w = jnp.fft.rfft(jnp.asarray(a), axis=-1)  # jax-cfd's Burgers state is (u_hat, t)
        return (w[0], jnp.zeros(())) if self.batch == 1 else (w, jnp.zeros((self.batch,), dtype=w.real.dtype))

    def physical(self, w_hat) -> np.ndarray:
        jnp = self.jax.numpy
        if self.ndim == 2:
            a = np.asarray(jnp.fft.irfftn(w_hat, axes=(-2, -1)))
            a = np.swapaxes(a, -1, -2)
        else:
            a = np.asarray(jnp.fft.irfft(w_hat[0], axis=-1))
        return a if self.batch > 1 else a[None]

    def run(self, w, steps: int):
        for _ in range(steps):
            w = self.step(w)
        return self.jax.block_until_ready(w)

    @staticmethod
    def dtype(w) -> str:
        return str((w[0] if isinstance(w, tuple) else w).dtype)


# ============================================================================ timing
def best_ms_per_step(codes: dict, repeats: int, target_s: float) -> dict:
    """Best ms/step of each code, timed round-robin (round r of every code, then r + 1).

    ``codes`` maps a name to ``(run, state, max_steps)`` with ``run(state, steps) -> state``
    (synchronised). Each code is warmed up, given a step count that makes a repeat last
    about ``target_s``, then timed; interleaving the codes makes the ratios robust to a
    load that changes during the run.
    """
    states, steps, samples, cpu = {}, {}, {}, {}
    for name, (run, state, max_steps) in codes.items():
        states[name] = run(state, 2)  # warm-up: integrator coefficients, FFT plans
        probe = min(8, max_steps)  # >= 8 steps: the CUDA-graph path is taken as in the timed runs
        t0 = time.perf_counter()
        states[name] = run(states[name], probe)
        est = max((time.perf_counter() - t0) / probe, 1e-6)
        steps[name] = min(max_steps, max(8, int(target_s / est)))
        samples[name], cpu[name] = [], []
    for _ in range(repeats):
        for name, (run, _, _) in codes.items():
            t0, c0 = time.perf_counter(), time.process_time()
            states[name] = run(states[name], steps[name])
            samples[name].append((time.perf_counter() - t0) / steps[name] * 1e3)
            cpu[name].append((time.process_time() - c0) / steps[name] * 1e3)
    out = {name: min(v) for name, v in samples.items()}
    out.update({name + "_cpu": min(v) for name, v in cpu.items()})
    return out


class _NoGraphs:
    """Runs ``run`` with the CUDA-graph replay turned off (SOLVERS_CUDA_GRAPHS=0)."""

    def __init__(self, run):
        self.run = run

    def __call__(self, state, steps):
        os.environ["SOLVERS_CUDA_GRAPHS"] = "0"
        try:
            return self.run(state, steps)
        finally:
            os.environ.pop("SOLVERS_CUDA_GRAPHS")


def ours_runner(eq, method: str, dt: float, device):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(w, steps):
        w = eq.simulate(w, dt=dt, steps=steps, method=method)
        sync()
        return w
    return run


def fft_floor_runner(eq, batch: int, device):
    """The FFT calls of one of our ETDRK4 steps alone (4 stages), on arrays of the step's shapes.

    NS2D (per stage, u and v or the two products batched): a complex y transform of
    the kept columns ``m_x <= (n - 1) // 3`` (contiguous rows), a real inverse x transform
    of the zero-padded half spectrum, a real forward x transform, and a complex y
    transform of the kept columns. Burgers: the zero-padded real inverse and the
    real forward transform.
    """
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    n, kept, half = eq.n, eq.grid.dealias_cutoff + 1, eq.n // 2 + 1
    cd, rd = eq.grid.complex_dtype, eq.grid.dtype
    if eq.ndim == 2:
        y_hat = torch.randn(batch, 2, kept, n, dtype=cd, device=device)
        x_hat = torch.randn(batch, 2, n, half, dtype=cd, device=device)
        real = torch.randn(batch, 2, n, n, dtype=rd, device=device)

        def stage():
            torch.fft.ifft(y_hat, dim=-1)
            torch.fft.irfft(x_hat, n=n, dim=-1)
            torch.fft.rfft(real, dim=-1)
            torch.fft.fft(y_hat, dim=-1)
    else:
        x_hat = torch.randn(batch, kept, dtype=cd, device=device)
        real = torch.randn(batch, n, dtype=rd, device=device)

        def stage():
            torch.fft.irfft(x_hat, n=n, dim=-1)
            torch.fft.rfft(real, dim=-1)

    def run(w, steps):
        for _ in range(4 * steps):
            stage()
        sync()
        return w
    return run


def numpy_runner(peer: NumpyPeer, method: str):
    step = peer.etdrk4 if method == "etdrk4" else peer.cnrk4

    def run(w, steps):
        for _ in range(steps):
            w = step(w)
        return w
    return run


def rel_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def initial_state(eq, batch: int, device):
    seeds = list(range(batch))
    if eq.ndim == 3:
        w = solvers.random_solenoidal_velocity(eq.grid, seeds, peak_wavenumber=3, energy=0.5)
    elif eq.ndim == 2:
        w = solvers.random_vorticity(eq.grid, seeds)
    else:
        w = solvers.random_velocity(eq.grid, seeds)
    return w.to(device)


def make_equation(ndim: int, n: int, dtype, device):
    if ndim == 3:
        return solvers.NavierStokes3D(n, viscosity=NU_3D, forcing=solvers.LinearForcing(A_3D, KF_3D),
                                      dtype=dtype, device=device)
    if ndim == 2:
        return solvers.NavierStokes2D(n, viscosity=NU, drag=DRAG, forcing=solvers.Kolmogorov(KF, 1.0),
                                      dtype=dtype, device=device)
    return solvers.Burgers1D(n, viscosity=NU_BURGERS, dtype=dtype, device=device)


def device_bandwidth(device) -> float | None:
    """Measured device-to-device copy bandwidth (bytes/s; read + write), CUDA only."""
    if device.type != "cuda":
        return None
    x = torch.empty(256 * 2 ** 20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(20):
        y.copy_(x)
    torch.cuda.synchronize()
    return 2 * x.numel() * 20 / (time.perf_counter() - t0)


# ============================================================================ main
def cases(args, device):
    f32, f64 = torch.float32, torch.float64
    sizes = args.sizes or ([128, 256] if args.quick else [128, 256, 512, 1024])
    out = []
    for dtype in (f32, f64):
        if str(dtype).replace("torch.", "") not in args.dtypes:
            continue
        for n in sizes:
            out.append(("NS2D", 2, n, 1, dtype))
        if device.type == "cuda" and dtype == f32 and not args.quick and args.sizes is None:
            out.append(("NS2D", 2, 2048, 1, dtype))
        if not args.no_batched:
            out.append(("NS2D", 2, 128, 16, dtype))
            out.append(("Burgers", 1, 4096, 64, dtype))
        if not args.no_3d:
            sizes3 = args.sizes3 or ([32] if args.quick else ([64, 128] + ([256, 512] if device.type == "cuda"
                                                                            and dtype == f32 else [])))
            out.extend(("NS3D", 3, n, 1, dtype) for n in sizes3)
    return out


def machine_description(device) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = f"{cpu}, {os.cpu_count()} cores, Linux {platform.release()}, Python {platform.python_version()}"
    if device.type == "cuda":
        text += f"; GPU {torch.cuda.get_device_name(device)}"
    return text


def main(args):
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("solver_speed: --device cuda but torch sees no CUDA device")
    cores = os.cpu_count() or 1
    threads = args.threads if args.threads else min(torch.get_num_threads(), cores)
    torch.set_num_threads(threads)
    repeats = args.repeats or (3 if args.quick else 9)
    target_s = 0.08 if args.quick else 0.25
    jmods, jax_note = (None, "skipped (--no-jax)") if args.no_jax else import_jax_cfd()
    if jmods is not None and device.type == "cuda" and jmods[0].default_backend() == "cpu":
        jax_note = "jax has no GPU backend here: jax-cfd not timed on the GPU"
        jmods = None
    use_numpy = not args.no_numpy and device.type == "cpu"
    versions = f"torch {torch.__version__}, numpy {np.__version__}"
    if jmods is not None:
        versions += f", jax {jmods[0].__version__}, jax-cfd {getattr(jmods[4], '__version__', '?')}"
    load0 = os.getloadavg()
    bandwidth = device_bandwidth(device)
    print(f"# device {device}, torch threads {threads}, dt {args.dt}, best of {repeats} rounds; {versions}",
          flush=True)
    if jax_note:
        print(f"# jax-cfd: {jax_note}", flush=True)

    rows = []
    for name, ndim, n, batch, dtype in cases(args, device):
        eq = make_equation(ndim, n, dtype, device)
        w0 = initial_state(eq, batch, device)
        res = {"case": f"{name} {batch}x{n}^{ndim}" if batch > 1 else f"{name} {n}^{ndim}",
               "dtype": str(dtype).replace("torch.", ""), "n": n, "ndim": ndim, "batch": batch}
        codes = {m: (ours_runner(eq, m, args.dt, device), w0, 200) for m in ("etdrk4", "cnrk4")}
        if ndim < 3:
            codes["floor"] = (fft_floor_runner(eq, batch, device), w0, 200)
        if device.type == "cuda":  # what the CUDA-graph replay buys: the same run, eager
            codes["eager"] = (_NoGraphs(ours_runner(eq, "etdrk4", args.dt, device)), w0, 200)
        if jmods is not None and ndim < 3:  # jax-cfd's spectral module is 1D/2D
            try:
                peer = JaxPeer(jmods, ndim, n, dtype, args.dt, batch)
                wj = peer.initial(w0)
                t0 = time.perf_counter()
                wj = peer.run(wj, 1)
                res["jax_compile_s"] = time.perf_counter() - t0
                res["jax_dtype"] = peer.dtype(wj)
                codes["jax"] = (peer.run, wj, 200)
            except Exception as exc:  # noqa: BLE001
                res["jax_error"] = f"{type(exc).__name__}: {exc}"
        if use_numpy:
            npeer = NumpyPeer(ndim, n, np.float32 if dtype == torch.float32 else np.float64, args.dt)
            wn = npeer.to_spectral(w0.cpu().numpy())
            for method in ("etdrk4", "cnrk4"):
                codes["np_" + method] = (numpy_runner(npeer, method), wn, 50 if ndim < 3 else 5)
        res.update(best_ms_per_step(codes, repeats, target_s))
        if bandwidth and ndim == 2:
            elem = 4 if dtype == torch.float32 else 8
            # ~96 N^2 bytes per fused RK stage in float32 (references.md); ETDRK4 has 4 stages
            res["roofline"] = 4 * 96 * (elem / 4) * batch * n ** ndim / bandwidth * 1e3
        if bandwidth and ndim == 3:
            elem = 4 if dtype == torch.float32 else 8
            # a rough floor, not a measured kernel count: per stage 9 real 3D FFTs of ~3 passes
            # (one per axis) reading and writing the half spectrum (~24 N^3 bytes each in float32)
            # plus ~50 N^3 bytes of elementwise work; ETDRK4 has 4 stages
            res["roofline"] = 4 * 270 * (elem / 4) * batch * n ** 3 / bandwidth * 1e3
        rows.append(res)
        print(format_row(res), flush=True)

    checks = agreement_checks(jmods, use_numpy, device)
    load1 = os.getloadavg()
    text = report(args, rows, checks, device, threads, repeats, versions, jax_note, bandwidth, load0, load1)
    print()
    print(text)
    if args.write:
        write_section(ROOT / "docs" / "performance.md", text)
        print(f"\nwrote the ## Solvers section of {ROOT / 'docs' / 'performance.md'}")


def agreement_checks(jmods, use_numpy, device) -> list[str]:
    """Same problem, same answers: float64, 128^2 NS2D and 4096 Burgers, dt = 1e-3.

    The NS2D state has its spectral peak at mode 4 (instead of 10), so that the
    difference between our 2/3 mask (|m| <= (n - 1) // 3) and jax-cfd's (rows
    -42..41 at n = 128, an asymmetric set) does not enter the comparison.
    """
    out = []
    if use_numpy:  # NS3D: ours vs the numpy implementation of the same algorithm
        eq = make_equation(3, 32, torch.float64, device)
        u0 = initial_state(eq, 2, device)
        peer = NumpyPeer(3, 32, np.float64, 1e-2)
        for m in ("etdrk4", "cnrk4"):
            ours = eq.simulate(u0, dt=1e-2, steps=20, method=m).cpu().numpy()
            w = numpy_runner(peer, m)(peer.to_spectral(u0.cpu().numpy()), 20)
            out.append(f"NS3D 32^3, {m}, 20 steps: ours vs numpy {rel_diff(ours, peer.to_physical(w)):.1e}")
    for ndim, n, batch in ((2, 128, 2), (1, 4096, 2)):
        eq = make_equation(ndim, n, torch.float64, device)
        seeds = list(range(batch))
        w0 = (solvers.random_vorticity(eq.grid, seeds, peak_wavenumber=4) if ndim == 2
              else solvers.random_velocity(eq.grid, seeds)).to(device)
        dt = 1e-3
        label = "NS2D 128^2" if ndim == 2 else "Burgers 4096"
        for steps in ((1, 20) if ndim == 2 else (20,)):
            ours = {m: eq.simulate(w0, dt=dt, steps=steps, method=m).cpu().numpy() for m in ("etdrk4", "cnrk4")}
            if use_numpy and steps == 20:
                peer = NumpyPeer(ndim, n, np.float64, dt)
                for m in ("etdrk4", "cnrk4"):
                    w = numpy_runner(peer, m)(peer.to_spectral(w0.cpu().numpy()), steps)
                    out.append(f"{label}, {m}, {steps} steps: ours vs numpy {rel_diff(ours[m], peer.to_physical(w)):.1e}")
            if jmods is not None and ndim == 2:
                jp = JaxPeer(jmods, ndim, n, torch.float64, dt, batch)
                wj = jp.physical(jp.run(jp.initial(w0), steps))
                out.append(f"{label}, cnrk4, {steps} step(s): ours vs jax-cfd {rel_diff(ours['cnrk4'], wj):.1e}")
    return out


def _fmt(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f}"


def _ratio(a, b):
    return None if a is None or b is None else a / b


def format_row(r) -> str:
    return (f"{r['case']:<22} {r['dtype']:<8} ETDRK4 {_fmt(r['etdrk4'])} CN-RK4 {_fmt(r['cnrk4'])} "
            f"floor {_fmt(r.get('floor'))} "
            f"jax-cfd {_fmt(r.get('jax'))} numpy {_fmt(r.get('np_etdrk4'))}/{_fmt(r.get('np_cnrk4'))} ms/step")


def report(args, rows, checks, device, threads, repeats, versions, jax_note, bandwidth, load0, load1) -> str:
    cmd = "python benchmarks/solver_speed.py " + " ".join(sys.argv[1:])
    lines = [
        f"Measured {datetime.date.today().isoformat()} with `{cmd.strip()}` on {machine_description(device)}; "
        f"{versions}. Device `{device}`, torch intra-op threads {threads}"
        + (" (XLA single-threaded too)" if threads == 1 else " (XLA: its default thread pool)")
        + f"; numpy.fft single-threaded. Load average {load0[0]:.1f} at the start, {load1[0]:.1f} at the end.",
        "",
        f"Milliseconds per time step (dt = {args.dt:g}), best of {repeats} interleaved rounds after a warm-up, "
        "the codes of a case timed round-robin; "
        "jax-cfd jit-compiled, compile time excluded. Kolmogorov flow (nu 1e-3, drag 0.1, k = 4), "
        "Burgers nu 1e-2 unforced; NS3D forced isotropic turbulence (nu 1e-2, linear forcing 0.2 u on |m| <= 2, "
        "a random solenoidal start; jax-cfd has no 3D spectral solver, the numpy peer is the same algorithm "
        "with unpruned rfftn). Ratios ours/peer: < 1 means ours is faster.",
        "",
    ]
    has_jax = any("jax" in r for r in rows)
    has_np = any("np_etdrk4" in r for r in rows)
    has_roof = any("roofline" in r for r in rows)
    has_eager = any("eager" in r for r in rows)
    head = ["case", "dtype", "ours ETDRK4", "ours CN-RK4", "FFT floor", "ETDRK4/floor"]
    if has_eager:
        head += ["ETDRK4 without CUDA graphs"]
    if has_jax:
        head += ["jax-cfd CN-RK4", "ETDRK4/jax", "CN-RK4/jax"]
    if has_np:
        head += ["numpy ETDRK4", "numpy CN-RK4", "ETDRK4/numpy", "CN-RK4/numpy"]
    if has_roof:
        head += ["ETDRK4 roofline", "ETDRK4/roofline"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["case"], r["dtype"], _fmt(r["etdrk4"]), _fmt(r["cnrk4"]), _fmt(r.get("floor")),
                 _fmt(_ratio(r["etdrk4"], r.get("floor")))]
        if has_eager:
            cells += [_fmt(r.get("eager"))]
        if has_jax:
            jx = r.get("jax")
            cells += [_fmt(jx) if jx is not None else "n/a",
                      _fmt(_ratio(r["etdrk4"], jx)), _fmt(_ratio(r["cnrk4"], jx))]
        if has_np:
            cells += [_fmt(r.get("np_etdrk4")), _fmt(r.get("np_cnrk4")),
                      _fmt(_ratio(r["etdrk4"], r.get("np_etdrk4"))), _fmt(_ratio(r["cnrk4"], r.get("np_cnrk4")))]
        if has_roof:
            cells += [_fmt(r.get("roofline"), 3), _fmt(_ratio(r["etdrk4"], r.get("roofline")))]
        lines.append("| " + " | ".join(cells) + " |")
    if device.type == "cpu":
        keys = [("etdrk4", "ours ETDRK4"), ("cnrk4", "ours CN-RK4"), ("floor", "FFT floor"), ("jax", "jax-cfd CN-RK4"),
                ("np_etdrk4", "numpy ETDRK4"), ("np_cnrk4", "numpy CN-RK4")]
        keys = [(k, label) for k, label in keys if any(k + "_cpu" in r for r in rows)]
        lines += ["", "The same runs in process CPU time (ms per step; all threads of the process summed; "
                  "less sensitive to other processes than the wall clock when single-threaded):", "",
                  "| case | dtype | " + " | ".join(label for _, label in keys)
                  + (" | ETDRK4/jax | CN-RK4/jax |" if any(k == "jax" for k, _ in keys) else " |"),
                  "|" + "---|" * (2 + len(keys) + (2 if any(k == "jax" for k, _ in keys) else 0))]
        for r in rows:
            cells = [r["case"], r["dtype"]] + [_fmt(r.get(k + "_cpu")) for k, _ in keys]
            if any(k == "jax" for k, _ in keys):
                cells += [_fmt(_ratio(r.get("etdrk4_cpu"), r.get("jax_cpu"))),
                          _fmt(_ratio(r.get("cnrk4_cpu"), r.get("jax_cpu")))]
            lines.append("| " + " | ".join(cells) + " |")
    notes = []
    if jax_note:
        notes.append(f"jax-cfd: {jax_note}.")
    if has_jax:
        notes.append("jax-cfd's Burgers is its `BurgersEquation` (3/2-rule padding, 3 FFTs per stage): "
                     "a related, not identical, algorithm. Batches run through `jax.vmap`. "
                     "jax-cfd state dtypes: " + ", ".join(sorted({f"{r['dtype']}->{r['jax_dtype']}" for r in rows
                                                                  if 'jax_dtype' in r})) + ". "
                     "Compile times: " + ", ".join(f"{r['case']} {r['dtype']} {r['jax_compile_s']:.1f} s"
                                                    for r in rows if "jax_compile_s" in r and r["n"] >= 512) + ".")
        errors = [f"{r['case']} {r['dtype']}: {r['jax_error']}" for r in rows if "jax_error" in r]
        if errors:
            notes.append("jax-cfd failed on: " + "; ".join(errors) + ".")
    if has_roof:
        notes.append(f"Roofline: 4 stages x ~96 N^2 bytes (float32; x2 in float64) per ETDRK4 step at the "
                     f"measured copy bandwidth {bandwidth / 1e9:.0f} GB/s (references.md's fused-traffic estimate).")
    if checks:
        notes.append("Same problem, same answer (float64, relative L2 difference of the state): "
                     + "; ".join(checks) + ".")
    lines += [""] + [f"- {n}" for n in notes]
    lines += ["", HOW_IT_IS_FAST]
    return "\n".join(lines)


HOW_IT_IS_FAST = """What the solver does to be fast (solvers/navier_stokes.py, burgers.py, integrators.py):

- Pruned transforms: after the 2/3 truncation only the columns m_x <= n/3 are non-zero, so
  the inverse is a complex FFT over y on those columns then a zero-padded real inverse FFT over
  x, and the forward a real FFT over x then a complex FFT over y on the kept columns only
  (same sums as irfftn/rfftn, about half the work). 4 real FFTs per stage (Basdevant form),
  u and v (and the two products) batched in one call each.
- The kept-columns step (`NavierStokes2D.kept_block`, no autograd, no closure, a steady
  forcing on the kept columns): outside the kept columns N + f = 0, so those modes get the
  exact linear factor e^{dt L} once per step and only the kept third of the spectrum enters
  the stages (ETDRK4 and CN-RK4). There the state is stored [m_x, m_y]-ordered: the y
  transforms run on contiguous rows and each stage needs two transposing copies, whose
  source rows are padded so that they are not a power of two bytes apart (a 4 KiB row
  stride maps a whole column onto one cache set: the copy was ~6x slower). Work buffers
  (the zero-padded half spectrum, the products) are allocated once per thread and batch.
- The multiply-adds between transforms run fused in place on `view_as_real` views, with the
  coefficients precomputed once as real tensors (no real-to-complex promotion). The
  differentiable path (autograd recording) is the plain expression over the full spectrum;
  the two agree to roundoff (1e-16 in float64, tested).
- What is left above the FFT floor is the elementwise work: ~11 multiply-adds per step on the
  kept columns, ~3 per stage in the nonlinear term, the transposing copies and the packing
  of the state. Fusing them needs a compiler (TorchInductor does not generate code for
  complex tensors; compiling the real-view multiply-adds between the FFT calls was not
  tried here).
- The per-step non-finite check is one flat reduction per batch member (no host sync on GPUs
  except every 50 steps).
- On CUDA, `simulate` replays one captured CUDA graph per step for small states (no autograd,
  steady forcing; a learned closure is captured with the step under no_grad); SOLVERS_CUDA_GRAPHS=0 turns it off.
- Threads: `torch.set_num_threads` matters on small, shared machines; oversubscribed cores
  make torch's intra-op threads very slow (use --threads 1 under load)."""


def write_section(path: Path, body: str):
    """Replace (or append) the '## Solvers' section of docs/performance.md, leaving the others alone."""
    head = "## Solvers"
    text = path.read_text() if path.exists() else "# Performance\n"
    lines = text.splitlines()
    start = next((i for i, l in enumerate(lines) if l.strip() == head), None)
    section = [head, "", body.rstrip(), ""]
    if start is None:
        new = lines + ([""] if lines and lines[-1].strip() else []) + section
    else:
        end = next((j for j in range(start + 1, len(lines)) if lines[j].startswith("## ")), len(lines))
        new = lines[:start] + section + lines[end:]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(new).rstrip() + "\n")


if __name__ == "__main__":
    main(ARGS)
