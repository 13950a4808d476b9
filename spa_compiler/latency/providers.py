"""Which onnxruntime provider a latency question is about, and how one run is timed on it.

CPU is the default everywhere latency is planned or checked.  CUDA is used
only when asked for, and then only if onnxruntime-gpu is installed *and* a
session really runs on a device; otherwise one line says so (exit 2).  On
CUDA the feeds and outputs stay on the device (IOBinding), so a timed run is
the kernels and not two host copies, and each run ends with a device sync.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from ..errors import UsageError

PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
PROVIDER_CHOICES = ("cpu", "cuda", "auto")


def providers_for(name: str) -> tuple[str, ...]:
    """onnxruntime providers for ``--provider NAME`` ('auto': CUDA when a GPU session works, else CPU)."""
    from ..runtime import default_providers

    if name not in PROVIDER_CHOICES:
        raise UsageError(f"unknown provider {name!r} (use one of {', '.join(PROVIDER_CHOICES)})")
    if name == "auto":
        return default_providers()
    if name == "cpu":
        return ("CPUExecutionProvider",)
    if default_providers()[0] != "CUDAExecutionProvider":
        raise UsageError(cuda_unavailable_reason())
    return ("CUDAExecutionProvider", "CPUExecutionProvider")


def cuda_unavailable_reason() -> str:
    """The one line a user gets when CUDA was asked for and cannot run."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    if "CUDAExecutionProvider" not in available:
        return (f"--provider cuda: onnxruntime {ort.__version__} has no CUDAExecutionProvider (providers: "
                f"{', '.join(p.replace('ExecutionProvider', '') for p in available)}); install onnxruntime-gpu "
                "matching the machine's CUDA, or use --provider cpu")
    return ("--provider cuda: onnxruntime-gpu is installed but no CUDA session can be created (no NVIDIA GPU "
            "visible, or CUDA/cuDNN libraries missing); use --provider cpu")


def short_name(provider: str) -> str:
    """'CPUExecutionProvider' -> 'cpu' (cache file names, report)."""
    return provider.replace("ExecutionProvider", "").lower()


def runner(sess, feeds: dict[str, np.ndarray]) -> Callable[[], None]:
    """A function that runs *sess* once on *feeds*: plain ``run`` on CPU, IOBinding with a sync on CUDA."""
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        return lambda: sess.run(None, feeds)
    import onnxruntime as ort

    binding = sess.io_binding()
    for name, value in feeds.items():  # copied to the device once, not per run
        binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(value, "cuda", 0))
    for meta in sess.get_outputs():
        binding.bind_output(meta.name, "cuda", 0)

    def run() -> None:
        sess.run_with_iobinding(binding)
        binding.synchronize_outputs()

    return run


CLOCK_ENV = "SPAC_BENCH_CLOCK"


def clock() -> Callable[[], float]:
    """Wall time, or with ``SPAC_BENCH_CLOCK=thread`` the calling thread's CPU time.

    Why: on a machine shared with other jobs, wall-clock runs are dominated by
    preemption (a 3 ms model measured at 40-90 ms under load 10 on 2 cores);
    with ``--threads 1`` onnxruntime computes on the calling thread, so its CPU
    time is the model's compute alone.  Only meaningful with one thread.
    """
    import os

    return time.thread_time if os.environ.get(CLOCK_ENV) == "thread" else time.perf_counter


def time_runs(run: Callable[[], None], warmup: int, runs: int) -> list[float]:
    """Milliseconds of *runs* calls of *run* after *warmup* untimed ones."""
    now = clock()
    for _ in range(warmup):
        run()
    samples = []
    for _ in range(runs):
        start = now()
        run()
        samples.append((now() - start) * 1000)
    return samples
