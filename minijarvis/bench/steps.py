"""The training steps bench.py measures: synthetic batches, one JARVIS instance viewed as each
method, train.py's step, the JARVIS parts to time inside it, fast random weights, and the
arithmetic around them (model FLOPs, MFU, static bytes, the environment). Timing and memory
live in :mod:`minijarvis.bench.measure`. Each helper is tested alone.
"""
from __future__ import annotations

import contextlib
import datetime
import platform
import sys

import torch

from minijarvis.bench.measure import PartTimer, median, part_medians, tensor_bytes

METHODS = ("llava", "jarvis", "nomask", "visper")
# bench.py's extra view: VisPer-LM's sequence (task tokens after the image) trained on NTP alone,
# no targets or predictors: llava's step at visper's length, what the task tokens cost the LLM.
VIEWS = METHODS + ("visper_tokens",)

# Dense bf16 peak of one GPU in TFLOP/s (vendor data sheets, no sparsity). First substring
# match of torch.cuda.get_device_name() wins, so the more specific names come first.
PEAK_BF16_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("H800", 989.0), ("A100", 312.0), ("A800", 312.0), ("L40S", 362.0),
                    ("B200", 2250.0))


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


# ----------------------------------------------------------------------------- random weights
_POOL = 65_537  # draws per pool: prime, so no power-of-two width repeats rows exactly


@contextlib.contextmanager
def fast_random_init(seed: int = 0):
    """Build models inside this block with random weights in seconds instead of minutes.

    Weight init on a CPU is random-number bound (Gemma2-2B: 47 s of ``normal_``, before the
    tensors even move). Inside the block torch's and transformers' initialisers keep their
    distribution (mean, std, bounds, fans) but tile one pool of ``_POOL`` draws over each
    tensor, at memory speed. Speed and memory do not depend on the values, which are only
    pseudo-random (a period of ``_POOL``); never train such a model.
    """
    import transformers.initialization as hf_init
    g = torch.Generator().manual_seed(seed)
    normal, uniform = torch.randn(_POOL, generator=g), torch.rand(_POOL, generator=g)

    def tile(tensor, pool, scale, shift, lo=None, hi=None):
        """tensor.view(-1)[i] = f(pool[i % _POOL]): one chunk scaled and cast, then copies of
        the filled prefix doubling it (same-dtype memcpy, a few calls per tensor)."""
        with torch.no_grad():
            flat, n = tensor.view(-1), tensor.numel()
            src = pool[:min(n, _POOL)] * scale + shift
            flat[:src.numel()].copy_(src.clamp(lo, hi) if lo is not None else src)
            done = src.numel()
            while done < n:
                step = min(done, n - done)
                flat[done:done + step].copy_(flat[:step])
                done += step
        return tensor

    def fan_std(tensor, gain, mode="fan_in"):
        fan_in, fan_out = torch.nn.init._calculate_fan_in_and_fan_out(tensor)
        fan = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        return gain / max(fan, 1) ** 0.5

    fast = {
        "normal_": lambda t, mean=0.0, std=1.0, generator=None: tile(t, normal, std, mean),
        "uniform_": lambda t, a=0.0, b=1.0, generator=None: tile(t, uniform, b - a, a),
        "trunc_normal_": lambda t, mean=0.0, std=1.0, a=-2.0, b=2.0, generator=None: tile(t, normal, std, mean, a, b),
        "kaiming_uniform_": lambda t, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None: tile(
            t, uniform, 2 * 3 ** 0.5 * fan_std(t, torch.nn.init.calculate_gain(nonlinearity, a), mode),
            -(3 ** 0.5) * fan_std(t, torch.nn.init.calculate_gain(nonlinearity, a), mode)),
        "kaiming_normal_": lambda t, a=0, mode="fan_in", nonlinearity="leaky_relu", generator=None: tile(
            t, normal, fan_std(t, torch.nn.init.calculate_gain(nonlinearity, a), mode), 0.0),
        "xavier_uniform_": lambda t, gain=1.0, generator=None: tile(
            t, uniform, 2 * 3 ** 0.5 * fan_std(t, gain, "fan_avg"), -(3 ** 0.5) * fan_std(t, gain, "fan_avg")),
        "xavier_normal_": lambda t, gain=1.0, generator=None: tile(t, normal, fan_std(t, gain, "fan_avg"), 0.0),
    }
    saved = []
    modules = dict.fromkeys([torch.nn.init, *(sys.modules[m] for m in hf_init.TORCH_MODULES_TO_PATCH if m in sys.modules)])
    for module in modules:
        for name, fn in fast.items():
            if hasattr(module, name):
                saved.append((module, name, getattr(module, name)))
                setattr(module, name, fn)
    table = {name: hf_init.TORCH_INIT_FUNCTIONS[name] for name in fast if name in hf_init.TORCH_INIT_FUNCTIONS}
    hf_init.TORCH_INIT_FUNCTIONS.update({name: fast[name] for name in table})
    try:
        yield
    finally:
        for module, name, fn in reversed(saved):
            setattr(module, name, fn)
        hf_init.TORCH_INIT_FUNCTIONS.update(table)


# ----------------------------------------------------------------------------- the steps
def synthetic_batch(model, batch_size: int, stage: str = "align", caption_len: int = 32,
                    chat_len: int = 128, fixed_length: bool = False, device="cpu", seed: int = 0) -> dict:
    """A batch as ``data.llava.collate`` makes it: one ``<image>`` per row, random text, right padding.

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


def set_attention(model, impl: str) -> None:
    """Switch the LLM's attention backend in place (bench.py's SDPA vs FlexAttention rows)."""
    model.cfg.llm_attn = impl  # JarvisModel then builds a BlockMask for flex_attention
    model.llm.set_attn_implementation(impl)


@contextlib.contextmanager
def method_view(model, method: str):
    """Run a JARVIS stage-1 ``JarvisModel`` as ``method``'s forward; yields ``run_jepa``.

    llava: unmasked and purely causal; forward then runs no target encoder and no proj_tgt
    (they run only for the JEPA branch or an alignment loss). jarvis: the masked JEPA step
    (pass run_jepa=True so every step is one). nomask: NTP + alignment at all slots, causal.
    visper: VisPer-LM's stage 1; visper_tokens: its sequence on NTP alone (:data:`VIEWS`).
    The model's method and bidirectional flag are restored on exit.
    """
    if method not in VIEWS:
        raise ValueError(f"method must be one of {', '.join(VIEWS)}; got {method!r}")
    saved = model.cfg.method, model.bidirectional_visual, model.task_tokens, model.visper, model.num_slots
    model.cfg.method = {"nomask": "nomask", "visper": "visper", "visper_tokens": "visper"}.get(method, "jarvis")
    model.bidirectional_visual = False  # llava, nomask, visper are causal; jarvis has its own mask
    if not method.startswith("visper"):  # VisPer-LM's parts (attach_visper) sit out the other methods' steps
        model.task_tokens = model.visper = None
        model.num_slots = model.num_visual
    elif model.visper is None:
        raise ValueError(f"the {method} view needs attach_visper(model) first")
    elif method == "visper_tokens":  # the tokens stay in the sequence; no targets, no predictors
        model.visper = None
    try:
        yield method == "jarvis"
    finally:
        model.cfg.method, model.bidirectional_visual = saved[:2]
        model.task_tokens, model.visper, model.num_slots = saved[2:]


def attach_visper(model, skip_init: bool = False) -> None:
    """Give a JARVIS stage-1 model VisPer-LM's stage-1 parts (task tokens, targets, predictors,
    temperatures) from ``model.cfg.visper_targets``, for :func:`method_view`'s ``visper``.
    ``skip_init``: timm's slow weight init skipped (random-weight speed runs only)."""
    import dataclasses

    from minijarvis.visper import TaskTokens, VisperHead, parse_targets
    specs = parse_targets(model.cfg.visper_targets)
    if skip_init:
        specs = [dataclasses.replace(s, kwargs={**s.kwargs, "weight_init": "skip"}) for s in specs]
    text = model.llm.config.get_text_config()
    model.task_tokens = TaskTokens(specs, model.num_visual, text.hidden_size)
    model.visper = VisperHead(specs, text.num_hidden_layers, text.hidden_size, model.image_size,
                              model.grid, model.cfg.visper_temperature)
    model.set_trainable()
    model.num_slots = model.num_visual + model.task_tokens.count


def predictors_fwd_bwd(model, captured: dict, bf16: bool = False) -> dict:
    """VisPer-LM's predictors and their loss alone, forward and backward, on the inputs of the
    last visper step (``captured`` by :func:`instrumented`): what they cost inside that step,
    which cannot be cut out of the LLM's backward. Gradients are dropped afterwards."""
    hidden = {layer: h.detach().requires_grad_(True) for layer, h in captured["args"][0].items()}
    device = next(iter(hidden.values())).device
    with autocast(device, bf16):
        terms = model.visper.losses(hidden, *captured["args"][1:], **captured["kwargs"])
    loss = model.cfg.visper_weight * sum(terms.values())
    loss.backward()
    for p in model.parameters():
        p.grad = None
    return dict(loss=float(loss.detach()))


def visper_parts(times: dict, outs: dict) -> dict:
    """VisPer-LM's breakdown and what it adds, paired round by round (as jarvis's extra_ms), from
    :func:`~minijarvis.bench.measure.interleaved`'s times and outs of the visper, visper_tokens and
    visper_predictors steps (and llava's, if it ran): ms. ``visper_extra_ms`` subtracts llava
    (the issue's form), ``visper_extra_tokens_ms`` llava at visper's length (the tokens counted)."""
    vp, pred = part_medians(outs["visper"]), [t * 1e3 for t in times["visper_predictors"]]
    out = dict(visper_breakdown_ms=dict(target_encoders=vp["visper_targets"], predictors_fwd=vp["visper_predictors_fwd"],
                                        predictors_fwd_bwd=median(pred)),
               visper_tokens_step_ms=median(times["visper_tokens"]) * 1e3)
    for key, base in (("visper_extra_ms", "llava"), ("visper_extra_tokens_ms", "visper_tokens")):
        out[key] = [(v - b - o["visper_targets"]) * 1e3 - p for v, b, o, p in zip(
            times["visper"], times[base], outs["visper"], pred)] if base in times else None
    if "llava" in times:
        out["visper_breakdown_ms"]["task_tokens_llm"] = median(
            (t - l) * 1e3 for t, l in zip(times["visper_tokens"], times["llava"]))
    return out


def autocast(device: torch.device, bf16: bool):
    """train.py --bf16: bfloat16 autocast (what trains keeps fp32 weights); else nothing."""
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def make_optimizer(model, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over what trains, fused (one kernel per tensor) on CUDA and CPU, as train.py; a
    tiny lr keeps random weights finite."""
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5,
                             fused=device.type in ("cuda", "cpu"))


def train_step(model, opt, batch: dict, method: str, generator, bf16: bool = False, timer=None) -> float:
    """train.py's step as ``method``: forward, backward, clip the gradient norm to 1.0, AdamW.
    Parameters without a gradient (another method's) are skipped. Returns the loss. With a
    :class:`PartTimer`, the backward pass is timed as its part ``backward``."""
    device = batch["input_ids"].device
    with method_view(model, method) as run_jepa, autocast(device, bf16):
        out = model(batch, generator, run_jepa=run_jepa)
    with timer.part("backward") if timer else contextlib.nullcontext():
        out["loss"].backward()
    params = [p for group in opt.param_groups for p in group["params"] if p.grad is not None]
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return float(out["loss"].detach())


def prime_optimizer(opt: torch.optim.Optimizer) -> None:
    """Create the optimizer state (AdamW's two moments) now, without moving a weight (one step
    at lr 0 on zero gradients), so that no measured step counts it as transient memory."""
    lrs = [group["lr"] for group in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for group, lr in zip(opt.param_groups, lrs):
        group["lr"] = lr


@contextlib.contextmanager
def instrumented(model, timer: PartTimer):
    """Time the JARVIS-specific parts of ``model``'s forward with ``timer``: ``target_encoder``
    (F_tgt forward), ``mask_sampling``, ``mask_building`` (which positions the step computes,
    and the 4D mask over them in the LLM's form) and ``llm_forward``; :func:`train_step` adds
    ``backward``. In a CPU memory round F_tgt's own transient peak lands in
    ``timer.peaks["target_encoder"]``. Everything is restored on exit."""
    llm = model.llm.model
    patched = [(llm, "forward", timer.wrap(llm.forward, "llm_forward")),
               (model, "_attention_mask", timer.wrap(model._attention_mask, "mask_building")),
               (model, "_kept_positions", timer.wrap(model._kept_positions, "mask_building"))]
    if model.target_encoder is not None:
        enc = model.target_encoder
        patched.append((enc, "forward", timer.wrap(enc.forward, "target_encoder", memory=True)))
    if model.visper is not None:  # VisPer-LM: its targets, and its predictors' forward + loss
        head, captured = model.visper, timer.__dict__.setdefault("captured", {})
        own_losses = head.losses

        def losses(*args, **kwargs):
            captured.update(args=args, kwargs=kwargs)  # for predictors_fwd_bwd
            return own_losses(*args, **kwargs)
        patched += [(head, "encode_batch", timer.wrap(head.encode_batch, "visper_targets", memory=True)),
                    (head, "losses", timer.wrap(losses, "visper_predictors_fwd"))]
    for obj, name, fn in patched:
        obj.__dict__[name] = fn  # an instance attribute shadows the method (nn.Module included)
    sampler = model.sampler
    if sampler is not None:
        model.sampler = timer.wrap(sampler, "mask_sampling", host=True)  # a plain attribute: any callable
    try:
        yield timer
    finally:
        for obj, name, _ in patched:
            del obj.__dict__[name]
        model.sampler = sampler


def static_bytes(model, opt, method: str) -> int:
    """Weights and buffers that ``method``'s own model holds (llava: no F_tgt, proj_tgt, z) +
    the optimizer state of those that train."""
    mods = [model.llm, model.context_encoder, model.proj]
    if method in ("jarvis", "nomask"):
        mods += [model.target_encoder, model.proj_tgt]
    params = [p for m in mods if m is not None for p in (*m.parameters(), *m.buffers())]
    if method == "jarvis" and model.z is not None:
        params.append(model.z)
    if method == "visper" and model.visper is not None:
        params += [*model.visper.parameters(), *model.visper.buffers(), *model.task_tokens.parameters()]
    state = [t for p in params if p.requires_grad for t in opt.state.get(p, {}).values()]
    return tensor_bytes(params) + tensor_bytes(state)


