"""Measuring training steps: medians, timing with device sync, peak memory, model FLOPs and MFU.

Used by ``bench.py``; nothing here knows about the model, so each helper is tested alone.

Peak memory is reported as *transient* bytes: the peak above what was allocated when the
measured call started (activations, gradients, temporaries; weights and optimizer state are
counted separately by the caller, see :func:`tensor_bytes`).

* CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus
  ``memory_allocated`` at the start. Costs nothing, so it runs inside the timed steps.
* CPU: PyTorch keeps no allocator statistics on CPU and the process RSS only ever grows, so
  :class:`LiveBytes` (a ``TorchDispatchMode``) adds the bytes of every tensor storage an op
  creates and subtracts them when the storage is freed (weakref finalizer). It sees every
  tensor that forward, backward (on CPU autograd runs on the calling thread) and the optimizer
  create, but not scratch buffers a kernel allocates and frees inside itself, and it slows
  every op down: measure CPU memory in separate, untimed calls.
"""
from __future__ import annotations

import datetime
import platform
import statistics
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

# Dense bf16 peak of one GPU in TFLOP/s (vendor data sheets, no sparsity). First substring
# match of torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("B200", 2250.0))


def median(values) -> float:
    """Median of a non-empty sequence of numbers (mean of the two middle ones if even)."""
    values = list(values)
    if not values:
        raise ValueError("median of an empty sequence: measure at least one step (--steps >= 1)")
    return float(statistics.median(values))


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
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.device.type != "meta":
                self._track(t.untyped_storage())
        return out

    def _track(self, storage) -> None:
        key = storage._cdata  # the StorageImpl: views and in-place results share it
        if key in self._alive:
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


def train_flops(n_body: int, tokens: int, n_head: int = 0, supervised: int = 0,
                llm_trains: bool = True) -> float:
    """Model FLOPs of one LLM training step, the standard 6·N·T count (Kaplan et al. 2020).

    Forward 2·N·T; backward 2·N·T for the activation gradients + 2·N·T for the weight
    gradients. A frozen LLM (stage 1: only proj trains, but gradients flow through the LLM to
    it) skips the weight gradients: 4·N·T. N = ``n_body`` (decoder layers; the token embedding
    is a lookup) applied to all ``tokens``; the LM head (``n_head`` parameters) runs only at
    the ``supervised`` positions (minijarvis applies it there only). Not counted: attention's
    L² term, frozen encoders, gradient-checkpoint recomputation (model FLOPs, not hardware FLOPs).
    """
    if min(n_body, tokens, n_head, supervised) < 0:
        raise ValueError("parameter and token counts must be >= 0")
    per_param_token = 6 if llm_trains else 4
    return float(per_param_token * (n_body * tokens + n_head * supervised))


def peak_flops(device_name: str) -> float | None:
    """Dense bf16 peak FLOP/s of a GPU named like ``torch.cuda.get_device_name()``, or None
    if it is not in :data:`PEAK_BF16_TFLOPS` (pass ``--peak-tflops`` then)."""
    for key, tflops in PEAK_BF16_TFLOPS:
        if key.lower() in device_name.lower():
            return tflops * 1e12
    return None


def mfu(flops: float, seconds: float, peak: float | None) -> float | None:
    """Model FLOPs utilisation: achieved FLOP/s over the peak (None without a peak)."""
    if peak is None:
        return None
    if seconds <= 0 or peak <= 0:
        raise ValueError(f"seconds and peak must be > 0, got {seconds} and {peak}")
    return flops / seconds / peak


def available_ram() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{name}, {torch.get_num_threads()} threads"


def environment(device: torch.device) -> dict:
    """Where and when a measurement was taken, and with what."""
    import timm
    import transformers
    return dict(device=device_name(device), device_type=device.type,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, transformers=transformers.__version__,
                timm=timm.__version__, python=platform.python_version(),
                cuda=torch.version.cuda if device.type == "cuda" else None,
                command=" ".join(sys.argv))
