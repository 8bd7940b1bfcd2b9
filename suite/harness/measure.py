"""Memory meters and timing for one meta-gradient computation.

``LiveBytes`` is device-independent: a TorchDispatchMode that sees every tensor an operator
returns, tracks each new storage until a weak reference reports it freed, and keeps the
peak of the sum (the same integer on every run; equal on CPU and GPU for the same dtype and
shapes, up to kernels that keep different intermediates). Storages that were packed for
backward (``saved_tensors_hooks``) are tracked as the autograd graph's bytes. Both count only
allocations made inside the block: inputs that exist before it are not included.

``CudaMemory`` reads torch.cuda's allocator peak and NVML (nvidia-ml-py) on a CUDA device.
"""
from __future__ import annotations

import os
import statistics
import weakref
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode


def _tensors(obj):
    """The tensors in an operator's arguments or results (nested tuples, lists, dicts)."""
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, (tuple, list)):
        for item in obj:
            yield from _tensors(item)
    elif isinstance(obj, dict):
        for item in obj.values():
            yield from _tensors(item)


class LiveBytes(TorchDispatchMode):
    """Peak live tensor bytes (``peak``) and peak bytes saved for backward (``graph_peak``)
    allocated inside a ``with`` block."""

    def __init__(self, track_graph: bool = True):
        super().__init__()
        self.track_graph = track_graph
        self.live: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}
        self.saved: set[int] = set()
        self.current = self.peak = 0
        self.graph_current = self.graph_peak = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _free(self, key: int) -> None:
        self._refs.pop(key, None)
        self.current -= self.live.pop(key)
        if key in self.saved:
            self.saved.discard(key)
            self.graph_current -= self._saved_bytes.pop(key)

    def _pack(self, tensor):
        key = tensor.untyped_storage()._cdata
        # Inputs that existed before the block (data, theta) are not in ``live``: not counted.
        if key in self.live and key not in self.saved:
            self.saved.add(key)
            self._saved_bytes[key] = self.live[key]
            self.graph_current += self.live[key]
            self.graph_peak = max(self.graph_peak, self.graph_current)
        # A detached alias, not the tensor itself: a saved output packed as itself would hold
        # its own grad_fn (a cycle through C++ that Python's collector cannot see), so a graph
        # built and dropped inside the block would stay counted as live.
        return tensor.detach()

    def __enter__(self):
        self._saved_bytes: dict[int, int] = {}
        if self.track_graph:
            self._hooks.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            if self.track_graph:
                self._hooks.__exit__(*exc)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = None
        for t in _tensors(out):
            if t.device.type == "meta":
                continue
            if inputs is None:
                inputs = {i.untyped_storage()._cdata for i in _tensors((args, kwargs))
                          if i.device.type != "meta"}
            storage = t.untyped_storage()
            key = storage._cdata
            if key in inputs or key in self.live:   # a view or an in-place result
                continue
            nbytes = storage.nbytes()
            self.live[key] = nbytes
            self.current += nbytes
            self.peak = max(self.peak, self.current)
            # A weak reference's callback runs when the storage is freed (storages keep
            # their Python object for their whole life, so this is the storage's death).
            self._refs[key] = weakref.ref(storage, lambda _, k=key: self._free(k))
        return out


class CudaMemory:
    """Allocator peak above the level at entry (torch.cuda) and NVML's device and process
    usage at exit, for one CUDA device."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.peak = self.nvml_used = self.nvml_process = None
        self.note = ""

    def __enter__(self):
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self._base = torch.cuda.memory_allocated(self.device)
        return self

    def __exit__(self, *exc):
        torch.cuda.synchronize(self.device)
        self.peak = torch.cuda.max_memory_allocated(self.device) - self._base
        self.nvml_used, self.nvml_process, self.note = nvml_usage(self.device)
        return False


def nvml_usage(device) -> tuple[int | None, int | None, str]:
    """(device used bytes, this process's bytes, note) from NVML; Nones with the reason."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as err:  # no driver, no library
        return None, None, f"NVML unavailable: {err}"
    try:
        index = torch.device(device).index or 0
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        used = int(pynvml.nvmlDeviceGetMemoryInfo(handle).used)
        mine = [p.usedGpuMemory for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle)
                if p.pid == os.getpid() and p.usedGpuMemory is not None]
        note = "" if mine else "NVML lists no memory for this process (containerised PID?)"
        return used, (int(mine[0]) if mine else None), note
    finally:
        pynvml.nvmlShutdown()


@dataclass
class MemoryFigures:
    peak_bytes: int
    graph_bytes: int
    cuda_peak_bytes: int | None = None
    nvml_used_bytes: int | None = None
    nvml_process_bytes: int | None = None
    memory_note: str = ""


def measure_memory(fn, device="cpu", *, track_graph: bool = True) -> MemoryFigures:
    """Run ``fn()`` once under the meters (it is slower there: time it separately).

    ``track_graph=False`` for code that uses torch.func transforms (grad, vjp), which refuse
    saved-tensor hooks: ``graph_bytes`` is then 0, meaning not measured. On CUDA ``fn`` runs
    once more, unmetered, before the metered call.
    """
    device = torch.device(device)
    if device.type == "cuda":
        # The first CUDA call of a process allocates cuBLAS / cuDNN workspaces that live as long
        # as the process (measured: +70 MB on an H200 on the first row of a sweep); run once
        # outside the meters so that they are not counted as this function's memory.
        fn()
        torch.cuda.synchronize(device)
        with CudaMemory(device) as cuda, LiveBytes(track_graph) as live:
            fn()
        return MemoryFigures(live.peak, live.graph_peak, cuda.peak, cuda.nvml_used,
                             cuda.nvml_process, cuda.note)
    with LiveBytes(track_graph) as live:
        fn()
    return MemoryFigures(live.peak, live.graph_peak,
                         memory_note=f"device {device.type}: no CUDA allocator or NVML figures")


@dataclass
class Timing:
    median_s: float
    iqr_s: float
    repeats: int
    threads: int


def time_calls(fns: dict, *, repeats: int = 5, threads: int | None = None,
               warmup: int = 1) -> dict[str, Timing]:
    """Median and interquartile range of ``repeats`` timed calls of each ``fns[name]()``,
    interleaved (A B A B ...) so that drifts of a shared machine hit all of them alike.

    torch.utils.benchmark.Timer pins the thread count for the measurement and synchronises
    CUDA around each call.
    """
    from torch.utils.benchmark import Timer
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1, got {repeats!r}")
    threads = threads or torch.get_num_threads()
    timers = {name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads)
              for name, fn in fns.items()}
    for _ in range(warmup):
        for timer in timers.values():
            timer.timeit(1)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, timer in timers.items():
            times[name].append(timer.timeit(1).times[0])
    out = {}
    for name, ts in times.items():
        q1, _, q3 = statistics.quantiles(ts, n=4, method="inclusive") if len(ts) > 1 else ts * 3
        out[name] = Timing(statistics.median(ts), q3 - q1, repeats, threads)
    return out

