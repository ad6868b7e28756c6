"""Measuring steps: time with a device sync, named parts timed inside a step, peak memory,
and interleaved rounds. Used by ``bench.py`` through :mod:`minijarvis.bench.steps`; each helper
is tested alone.

Peak memory is reported as *transient* bytes: the peak above what was allocated when the
measured call started (activations, gradients, temporaries; weights and optimizer state are
counted separately by the caller, see :func:`tensor_bytes`).

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``memory_allocated`` at the start. Costs nothing, so it runs inside the timed steps.
* CPU: PyTorch keeps no allocator statistics on CPU and the peak RSS (ru_maxrss) never falls, so
  :class:`LiveBytes` (a ``TorchDispatchMode``) adds the bytes of every tensor storage an op
  creates and subtracts them when the storage is freed (weakref finalizer). It sees every
  tensor that forward, backward (on CPU autograd runs on the calling thread) and the optimizer
  create, but not scratch buffers a kernel allocates and frees inside itself, and it slows
  every op down: :func:`interleaved` measures CPU memory in the untimed first warm-up round.
"""
from __future__ import annotations

import contextlib
import gc
import statistics
import time
import weakref

import torch
from tqdm import tqdm
from torch.utils._python_dispatch import TorchDispatchMode, _get_current_dispatch_mode_stack
from torch.utils._pytree import tree_leaves


def median(values) -> float:
    """Median of a non-empty sequence of numbers (mean of the two middle ones if even)."""
    values = list(values)
    if not values:
        raise ValueError("median of an empty sequence: measure at least one step (--steps >= 1)")
    return float(statistics.median(values))


def part_medians(outs: list[dict]) -> dict:
    """Median ms of every timed part over the measured steps (0 for a part a step skipped)."""
    names = {k for out in outs for k in out if k != "loss"}
    return {k: median(out.get(k, 0.0) for out in outs) * 1e3 for k in sorted(names)}


def sync(device: torch.device) -> None:
    """Wait for queued kernels: CUDA calls return before the GPU is done."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> tuple[float, object]:
    """(seconds, fn()) with a device sync before and after, so the time is the work's."""
    sync(device)
    start = time.perf_counter()
    out = fn()
    sync(device)
    return time.perf_counter() - start, out


def tensor_bytes(tensors) -> int:
    """Bytes held by the storages of ``tensors``, each storage counted once (tied weights,
    views). Non-tensors and None are skipped."""
    seen, total = set(), 0
    for t in tensors:
        if not torch.is_tensor(t):
            continue
        storage = t.untyped_storage()
        key = (storage.device, storage.data_ptr())
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


class LiveBytes(TorchDispatchMode):
    """``with LiveBytes() as lb: ...``: ``lb.peak`` = most bytes of tensor storages created
    inside the block and alive at once; ``lb.live`` = those still alive. CPU stand-in for the
    CUDA allocator statistics (module docstring: what it sees and what it misses)."""

    def __init__(self):
        super().__init__()
        self.live = self.peak = 0
        self._alive: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # in-place ops, views and out= return storages that existed before the op: not new
        old = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t.untyped_storage(), old)
        return out

    def _track(self, storage, old: set) -> None:
        key = storage._cdata  # the StorageImpl: views and in-place results share it
        if key in self._alive or key in old:
            return
        nbytes = storage.nbytes()
        self._alive.add(key)
        self.live += nbytes
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        if key in self._alive:
            self._alive.discard(key)
            self.live -= nbytes


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.transient`` (bytes above the start).

    CUDA: allocator statistics (``pm.peak`` = absolute peak as well). CPU: :class:`LiveBytes`
    when ``track_cpu`` (slow, untimed calls only), else ``transient`` stays None.
    """

    def __init__(self, device: torch.device, track_cpu: bool = True):
        self.device, self.track_cpu = device, track_cpu
        self.transient = self.peak = None
        self._mode = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
        elif self.track_cpu:
            self._mode = LiveBytes().__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak = torch.cuda.max_memory_allocated(self.device)
            self.transient = self.peak - self._start
        elif self._mode is not None:
            self._mode.__exit__(*exc)
            self.transient = self._mode.peak


def tracking_cpu_memory() -> bool:
    """True inside a :class:`LiveBytes` block (the CPU memory round of :func:`interleaved`)."""
    return any(isinstance(mode, LiveBytes) for mode in _get_current_dispatch_mode_stack())


class PartTimer:
    """Seconds spent in named parts of a step, timed *inside* the step, so a part costs what
    it costs there (cold caches, allocator state) and nothing runs twice.

    ``with timer.part(name): ...`` or ``timer.wrap(fn, name)``; :meth:`collect` returns
    {name: seconds} summed since the last collect. CPU: ``perf_counter`` (ops are synchronous).
    CUDA: events on the current stream, read after the step, so no sync is added inside it;
    a ``host=True`` part (CPU work such as the mask sampler) uses ``perf_counter``, an upper
    bound on its cost, since it may overlap kernels already queued.
    A ``memory=True`` part run inside a CPU memory round (:func:`tracking_cpu_memory`) also
    records its own transient peak: ``timer.peaks[name]`` (bytes, the most seen).
    """

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._seconds: dict[str, float] = {}
        self._events: list = []
        self.peaks: dict[str, int] = {}

    @contextlib.contextmanager
    def part(self, name: str, host: bool = False, memory: bool = False):
        if memory and not self.cuda and tracking_cpu_memory():
            with LiveBytes() as own:  # nested: the round's tracker still sees every op
                with self.part(name, host):
                    yield
            self.peaks[name] = max(self.peaks.get(name, 0), own.peak)
        elif self.cuda and not host:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            try:
                yield
            finally:
                end.record()
                self._events.append((name, start, end))
        else:
            t0 = time.perf_counter()
            try:
                yield
            finally:
                self._add(name, time.perf_counter() - t0)

    def wrap(self, fn, name: str, host: bool = False, memory: bool = False):
        def timed(*args, **kwargs):
            with self.part(name, host, memory):
                return fn(*args, **kwargs)
        return timed

    def _add(self, name: str, seconds: float) -> None:
        self._seconds[name] = self._seconds.get(name, 0.0) + seconds

    def collect(self) -> dict[str, float]:
        if self._events:
            torch.cuda.synchronize()
            for name, start, end in self._events:
                self._add(name, start.elapsed_time(end) / 1e3)
        out, self._seconds, self._events = self._seconds, {}, []
        return out


def interleaved(fns: dict, steps: int, warmup: int, device: torch.device,
                setup: dict | None = None, desc: str | None = None) -> tuple[dict, dict, dict]:
    """``warmup`` + ``steps`` rounds, each calling every fn once in order (``setup[name]()``
    first, untimed), so that machine noise hits all of them alike. ``desc``: a progress bar
    of the rounds on stderr under that name (none without).

    Returns ({name: [seconds per measured round]}, {name: transient peak bytes},
    {name: [fn's return value per measured round]}). Peaks: CUDA, the most over the measured
    rounds (free to read); CPU, from the first warm-up round, which :class:`LiveBytes` slows
    down and is untimed anyway (so CPU needs ``warmup >= 1``).
    """
    if device.type != "cuda" and warmup < 1:
        raise ValueError("on CPU the first warm-up round measures memory: use warmup >= 1")
    times, peaks, outs = {k: [] for k in fns}, {k: 0 for k in fns}, {k: [] for k in fns}
    for i in tqdm(range(warmup + steps), desc=desc, unit="round", leave=False, disable=desc is None):
        for name, fn in fns.items():
            if setup and name in setup:
                setup[name]()
            with PeakMemory(device, track_cpu=i == 0) as pm:
                seconds, out = timed(fn, device)
            if device.type != "cuda" and i == 0:
                peaks[name] = pm.transient
            if i >= warmup:
                times[name].append(seconds)
                outs[name].append(out)
                if device.type == "cuda":
                    peaks[name] = max(peaks[name], pm.transient)
    return times, peaks, outs


def largest_fitting(fits, limit: int) -> int:
    """Largest batch b = 1, 2, 4, ... <= ``limit`` with ``fits(b)``, doubling from 1 and
    stopping at the first failure (memory only grows with the batch); 0 if batch 1 fails."""
    if limit < 1 or not fits(1):
        return 0
    size = 1
    while 2 * size <= limit and fits(2 * size):
        size *= 2
    return size


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def release(device: torch.device) -> None:
    """Collect garbage and hand cached CUDA blocks back (after an out-of-memory error)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
