"""NUTS that starts fast: nutpie's sampler (Rust) driving the PyMC model's log density and
gradient as compiled by PyTensor's own backend (numba), whose compiled code PyTensor caches on
disk across processes.

Why not `pm.sample(nuts_sampler="nutpie")`: nutpie wraps the compiled graph in numba C
callbacks built as closures, which numba cannot cache, so every process compiles again (about 5
to 13 s for the shipped models). Here the sampler calls the cached compiled function from
Python instead: a few tens of microseconds per gradient, and a warm start of about a second.
PyMC's own NUTS (`pm.sample(nuts_sampler="pymc")`) uses the same cache but spends seconds in
its initialisation and tunes less well (lower ESS per draw on the shipped cases).

The functions come from nutpie's PyMC front end (`nutpie.compile_pymc._make_functions`, the
routine its JAX back end uses); `tests/test_collapsed.py` pins the behaviour (same seed, same draws,
with a cold or a warm cache)."""

from __future__ import annotations

import shutil
import sys
import threading
import time
import warnings
from contextlib import contextmanager

import numpy as np

# PyTensor warns once per process, when a C-compiled function (here PyMC's initial-point
# function) first asks for BLAS flags, that it "could not link to a BLAS installation". The log
# density and its gradient are compiled by numba, which links BLAS itself; the C-compiled
# initial point is a few scalar operations. The text says nothing the user can act on here.
LIBRARY_WARNINGS = ((UserWarning, r"PyTensor could not link to a BLAS installation"),)


@contextmanager
def quiet_library_warnings():
    """Silence exactly the library warnings in `LIBRARY_WARNINGS` (by category and message)
    while compiling; every other warning, ours and the sampler's, still shows."""
    with warnings.catch_warnings():
        for category, message in LIBRARY_WARNINGS:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def compile_model(model):
    """A nutpie model of a PyMC model, its log density and gradient compiled (cached) by
    PyTensor's numba back end; data (`pm.Data`) are passed as arguments, not baked into the
    compiled code, so one compile serves every data set of the same shape (on disk, and in
    the process: `compiled.with_data(name=array, ...)` gives the model with other data)."""
    from nutpie.compile_pymc import _make_functions, _prepare_dims_and_coords
    from nutpie.compiled_pyfunc import from_pyfunc
    from pymc.initial_point import make_initial_point_fn

    with quiet_library_warnings():
        seeded_point = make_initial_point_fn(
            model=model,
            default_strategy="support_point",
            jitter_rvs=set(model.free_RVs),
            return_transformed=True,
        )
    lock = threading.Lock()

    def initial_point(seed):
        """PyMC's seeded initial point, one chain's thread at a time: it reseeds shared random
        generators, then calls one compiled function, so chains started at once in threads
        took each other's seeds or found its outputs emptied (nutpie: 'Failed to initialize
        point: NoneType ...')."""
        with lock:
            return {k: np.array(v, copy=True) for k, v in seeded_point(seed).items()}

    with quiet_library_warnings():
        n_dim, _, logp_fn, expand_fn, init_fn, shape_info, reparametrized = _make_functions(
            model,
            mode=_mode(),
            compute_grad=True,
            join_expanded=False,
            pymc_initial_point_fn=initial_point,
        )
    names, _, shapes = shape_info
    logp_jit, expand_jit = logp_fn.vm.jit_fn, expand_fn.vm.jit_fn
    logp_names = [v.name for v in logp_fn.get_shared()]
    expand_names = [v.name for v in expand_fn.get_shared()]
    data = {v.name: v.get_value() for v in (*logp_fn.get_shared(), *expand_fn.get_shared())}

    def make_logp():
        def logp(x, **shared):
            value, grad = logp_jit(x, *[shared[n] for n in logp_names])
            return float(value), np.require(grad, np.float64, ("C", "W"))

        return logp

    def make_expand(seed1, seed2, chain):
        def expand(x, **shared):
            values = expand_jit(x, *[shared[n] for n in expand_names])
            return {
                n: np.asarray(v, dtype="float64", order="C").reshape(s)
                for n, v, s in zip(names, values, shapes, strict=True)
            }

        return expand

    dims, coords = _prepare_dims_and_coords(model, shape_info, reparametrized)
    return from_pyfunc(
        ndim=n_dim,
        make_logp_fn=make_logp,
        make_expand_fn=make_expand,
        make_initial_point_fn=init_fn,
        expanded_dtypes=[np.dtype("float64")] * len(names),
        expanded_shapes=shapes,
        expanded_names=names,
        dims=dims,
        coords=coords,
        shared_data=data,
        reparameterized_names=reparametrized,
    )


def sample(
    model,
    *,
    draws: int,
    tune: int,
    chains: int,
    seed: int,
    target_accept: float,
    progressbar: bool = False,
):
    """Draws of `model` (a PyMC model, or one `compile_model` made) as an xarray DataTree with
    posterior and sample_stats groups: nutpie's NUTS, chains in threads, seeded by `seed` (the
    draws do not depend on the cache or the number of threads). BLAS runs single-threaded
    meanwhile: the chains' threads calling a multi-threaded OpenBLAS for small matrices (the
    collapsed dense kernel's Cholesky) oversubscribed the cores, a gradient taking 30 ms
    instead of 0.07 (Pastes: 40 s of sampling instead of 1.5). `progressbar`: report the
    compile and the sampling on stderr (`Progress`)."""
    import nutpie
    import pymc as pm
    from threadpoolctl import threadpool_limits

    progress = Progress(chains, max(tune, 1), draws) if progressbar else None
    try:
        if isinstance(model, pm.Model):
            if progress:
                progress.compiling()
            compiled = compile_model(model)
        else:
            compiled = model
        with threadpool_limits(limits=1, user_api="blas"):
            return nutpie.sample(
                compiled,
                draws=draws,
                tune=max(tune, 1),  # nuts-rs needs a tuning step
                chains=chains,
                seed=seed,
                save_warmup=False,
                progress_bar=False,  # nutpie's own: a multi-line table, or HTML in Jupyter
                progress_callback=progress,
                progress_rate=PROGRESS_RATE_MS,
                target_accept=target_accept,
            )
    finally:
        if progress:
            progress.done()


PROGRESS_RATE_MS = 250  # how often nutpie reports the chains' progress


class Progress:
    """The sampler's progress on stderr: a line while the log density compiles, then the draws
    of every chain together with the rate measured since the first draw (no rate before it:
    nothing like '0.00 draws/s' while the chains start), then a summary. On a terminal one line
    is redrawn in place (clipped to the terminal's width); otherwise (a log file) only the
    compile, the start and the summary are written, a line each. nutpie calls it from a
    background thread with its `ChainProgress` records."""

    LOGGED = ("start",)  # the redrawn phases also written when the stream is not a terminal

    def __init__(self, chains: int, tune: int, draws: int, stream=None):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total = chains * (tune + draws)
        self.chains, self.tune, self.draws = chains, tune, draws
        self.t0 = time.perf_counter()
        self.first: tuple[float, int] | None = None  # (time, draws) at the first draw seen
        self.phase = ""
        self.last = (0, 0)  # (draws, divergences)
        self.lock = threading.Lock()

    def _show(self, text: str, phase: str) -> None:
        with self.lock:
            if self.tty:  # clipped to the terminal: a wrapped line would not be redrawn
                width = max(shutil.get_terminal_size().columns, 40) - 1
                self.stream.write(f"\r\x1b[2K{f'[workbench] {text}'[:width]}")
            elif phase != self.phase and phase in self.LOGGED:
                self.stream.write(f"[workbench] {text}\n")
            self.phase = phase
            self.stream.flush()

    def compiling(self) -> None:
        """A line of its own (not redrawn, so never clipped)."""
        with self.lock:
            self.stream.write(
                "[workbench] compiling the log density (read from the disk cache when this "
                "model shape ran before; the first time may take minutes) ...\n"
            )
            self.stream.flush()
            self.phase = "compile"

    def __call__(self, chains) -> None:
        done = sum(int(c.finished_draws) for c in chains)
        div = sum(int(c.divergences) for c in chains)
        now = time.perf_counter()
        self.last = (done, div)
        if done == 0:
            self._show(
                f"sampling: starting {self.chains} chains of {self.tune} tuning steps and "
                f"{self.draws} draws ...",
                "start",
            )
            return
        if self.first is None:
            self.first = (now, done)
        t, d0 = self.first
        rate = f", {(done - d0) / (now - t):.0f} draws/s" if now - t > 0.5 else ""
        stage = "tuning" if any(c.tuning for c in chains) else "sampling"
        self._show(f"{stage}: chain draws {done}/{self.total}{rate}, {div} divergences", "sample")

    def done(self) -> None:
        """The summary line (or, when no draw was made, the current line ended)."""
        done, div = self.last
        if done == 0:
            if self.tty:
                self.stream.write("\n")
                self.stream.flush()
            return
        seconds = time.perf_counter() - self.t0
        text = (
            f"sampling: done, {done} iterations in {self.chains} chains "
            f"({self.chains * self.draws} draws kept), {seconds:.1f} s with the compile"
        )
        with self.lock:
            self.stream.write(
                f"\r\x1b[2K[workbench] {text}\n" if self.tty else f"[workbench] {text}\n"
            )
            self.stream.flush()


def _mode():
    """PyTensor's numba mode without the in-place rewrites (quadratic in the graph's size: they
    took most of the compile of the collapsed models' unrolled graphs) and without fast-math
    (with it, code compiled cold and code loaded from the cache round differently, so the same
    seed gave different draws)."""
    import pytensor
    from pytensor.compile.mode import get_mode

    pytensor.config.numba__fastmath = False
    return get_mode("NUMBA").excluding("inplace")
