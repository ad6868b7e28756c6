"""Measuring training steps: timing with device sync, peak memory, model FLOPs and MFU, and
the steps themselves (synthetic batches, one JARVIS instance viewed as each method).

Used by ``bench.py`` (which decides what to measure and reports it); each helper is tested alone.

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
  every op down: measure CPU memory in separate, untimed calls.
"""
from __future__ import annotations

import contextlib
import datetime
import gc
import platform
import statistics
import sys
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

METHODS = ("llava", "jarvis", "nomask")

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


def environment(device: torch.device, command: str | None = None) -> dict:
    """Where and when a measurement was taken, with what, and by which command (default: argv)."""
    import timm
    import transformers
    return dict(device=device_name(device), device_type=device.type,
                date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                torch=torch.__version__, transformers=transformers.__version__,
                timm=timm.__version__, python=platform.python_version(),
                cuda=torch.version.cuda if device.type == "cuda" else None,
                command=command or " ".join(["python", *sys.argv]))


# ----------------------------------------------------------------------------- the steps
def synthetic_batch(model, batch_size: int, stage: str = "align", caption_len: int = 32,
                    chat_len: int = 128, fixed_length: bool = False, device="cpu", seed: int = 0) -> dict:
    """A batch as ``data.collate`` makes it: one ``<image>`` per row, random text, right padding.

    align: ``[<image>] + caption`` (the release's plain template); finetune: 8 header tokens,
    the image, a question of chat_len/4 tokens, then the answer (chat_len text tokens in all).
    Labels on the caption / answer only. Their lengths vary by +-25% across rows, as real
    captions do (so batches carry padding), unless ``fixed_length``.
    """
    if stage not in ("align", "finetune") or caption_len < 1 or chat_len < 11:
        raise ValueError("stage must be align or finetune, caption_len >= 1, chat_len >= 11")
    g = torch.Generator().manual_seed(seed)
    head, question = (0, 0) if stage == "align" else (8, chat_len // 4)
    answer = caption_len if stage == "align" else chat_len - head - question - 1
    spread = 0 if fixed_length else answer // 4
    start = head + 1 + question  # first supervised position
    lengths = start + answer + torch.randint(-spread, spread + 1, (batch_size, 1), generator=g)
    pos = torch.arange(int(lengths.max()))[None]
    low = max(model.tokenizer.all_special_ids) + 1
    vocab = min(len(model.tokenizer), model.llm.config.get_text_config().vocab_size)
    ids = torch.randint(low, vocab, (batch_size, pos.shape[1]), generator=g)
    ids[:, head] = model.image_token_id
    real = pos < lengths
    ids = ids.masked_fill(~real, model.tokenizer.pad_token_id or 0)
    batch = dict(input_ids=ids, attention_mask=real.long(), labels=ids.masked_fill(~real | (pos < start), -100),
                 images=torch.rand(batch_size, 3, model.image_size, model.image_size, generator=g),
                 has_image=torch.ones(batch_size, dtype=torch.bool))
    return {k: v.to(device) for k, v in batch.items()}


@contextlib.contextmanager
def method_view(model, method: str):
    """Run a JARVIS stage-1 ``JarvisModel`` as ``method``'s forward; yields ``run_jepa``.

    llava: unmasked and purely causal; forward then runs no target encoder and no proj_tgt
    (they run only for the JEPA branch or an alignment loss). jarvis: the masked JEPA step
    (pass run_jepa=True so every step is one). nomask: NTP + alignment at all slots, causal.
    The model's method and bidirectional flag are restored on exit.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
    saved = model.cfg.method, model.bidirectional_visual
    model.cfg.method = "nomask" if method == "nomask" else "jarvis"
    model.bidirectional_visual = False  # llava and nomask are causal; jarvis has its own mask
    try:
        yield method == "jarvis"
    finally:
        model.cfg.method, model.bidirectional_visual = saved


def autocast(device: torch.device, bf16: bool):
    """train.py --bf16: bfloat16 autocast (what trains keeps fp32 weights); else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def make_optimizer(model, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over what trains, fused on CUDA (as train.py); a tiny lr keeps random weights finite."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                             fused=device.type == "cuda")


def train_step(model, opt, batch: dict, method: str, generator, bf16: bool = False) -> float:
    """train.py's step as ``method``: forward, backward, clip the gradient norm to 1.0, AdamW.
    Parameters without a gradient (another method's) are skipped. Returns the loss."""
    device = batch["input_ids"].device
    with method_view(model, method) as run_jepa, autocast(device, bf16):
        out = model(batch, generator, run_jepa=run_jepa)
    out["loss"].backward()
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out["loss"].detach())


def llm_fwd_bwd(model, x: dict) -> None:
    """The LLM alone on ``model.prepare_inputs`` output: forward, L_NTP at the supervised
    positions (the forward's own loss), backward to the input embeddings."""
    embeds = x["embeds"].detach().requires_grad_()
    hidden = model.llm.model(inputs_embeds=embeds, attention_mask=x["mask"], use_cache=False).last_hidden_state
    model._ntp_loss(hidden, x["labels"]).backward()


def static_bytes(model, opt, method: str) -> int:
    """Weights and buffers that ``method``'s own model holds (llava: no F_tgt, proj_tgt, z) +
    the optimizer state of those that train."""
    mods = [model.llm, model.context_encoder, model.proj]
    if method in ("jarvis", "nomask"):
        mods += [model.target_encoder, model.proj_tgt]
    params = [p for m in mods if m is not None for p in (*m.parameters(), *m.buffers())]
    if method == "jarvis" and model.z is not None:
        params.append(model.z)
    state = [t for p in params if p.requires_grad for t in opt.state.get(p, {}).values()]
    return tensor_bytes(params) + tensor_bytes(state)


def interleaved(fns: dict, steps: int, warmup: int, device: torch.device,
                setup: dict | None = None) -> tuple[dict, dict]:
    """``warmup`` + ``steps`` rounds, each calling every fn once in order (``setup[name]()``
    first, untimed), so that machine noise hits all of them alike. Returns
    ({name: [seconds per measured round]}, {name: CUDA transient peak bytes, 0 on CPU})."""
    times, peaks = {k: [] for k in fns}, {k: 0 for k in fns}
    for i in range(warmup + steps):
        for name, fn in fns.items():
            if setup and name in setup:
                setup[name]()
            with PeakMemory(device, track_cpu=False) as pm:
                seconds, _ = timed(fn, device)
            if i >= warmup:
                times[name].append(seconds)
                peaks[name] = max(peaks[name], pm.transient or 0)
    return times, peaks


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
