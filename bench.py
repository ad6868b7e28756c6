"""Speed and memory of minijarvis training steps, with random weights at a preset's real shape.

    python bench.py                          # tiny preset, CPU, about 25 s
    python bench.py --preset gemma2-2b       # real shape on CPU: batch 1, llava + jarvis, 2 + 3 rounds
    python bench.py --cuda-suite             # one GPU: the rows of docs/speed.md's table
    python bench.py --preset vicuna-7b --attn-compare      # the suite's second half alone (GPU)

One process, one model instance, built as JARVIS stage 1. Each method is a *view* of it
(``method_view``) and the methods run interleaved, one step each per round, so machine noise
hits them alike:
  * ``llava``: plain causal NTP on the unmasked image. The forward runs no target encoder and
    no proj_tgt when neither the JEPA branch nor an alignment loss runs;
  * ``jarvis``: the masked JEPA step, forced on every step (the lambda coin would mix in plain
    steps); its LLM skips the dropped slots nobody attends, as train.py does
    (``--keep-dropped-slots``: the release's full sequence); ``nomask``: NTP + alignment of h_j
    at all slots, causal;
  * breakdown of the JARVIS step, timed *inside* the jarvis steps themselves
    (``bench.steps.instrumented``): F_tgt forward, mask sampling, mask building (the kept
    positions and the 4D mask over them, in the LLM's form), LLM forward + the backward pass (the backward also
    carries proj, z and proj_tgt); the same LLM parts of the llava steps for comparison; the
    rest (F_ctx, proj, losses, AdamW) is "other". Nothing runs twice, so a real-shape CPU run
    costs only its steps;
  * ``visper``: VisPer-LM's step (``bench.steps.attach_visper``), with llava at its length as
    one more step of each round; breakdown and targets: ``bench.steps.visper_parts``;
  * stage 2: F_tgt, z and proj_tgt are dropped (a stage-2 model has none), the LLM trains and
    the ``llava`` view runs on a chat-like batch; on CUDA at the largest batch that fits.
A step is train.py's: forward (bf16 autocast with --bf16), backward, clip to 1.0, AdamW.
Precision follows train.py --bf16: frozen networks in bf16, what trains in fp32 (stage 2: the
LLM's fp32 master weights; if even batch 1 does not fit, pure bf16 weights, and the JSON says so).
Memory per method = static (weights of that method's model + its optimizer state, created
before the first step) + transient (peak above the step's start): CUDA from the allocator in
the measured steps, CPU from the first warm-up round (see minijarvis/bench/measure.py).
Targets (``minijarvis.bench.report``): jarvis - llava - F_tgt and visper's two forms, by round.
Random weights: real shapes are built with ``bench.steps.fast_random_init`` (in bf16 with --bf16),
then moved; random timm encoders skip timm's slow truncated-normal init.
"""
from __future__ import annotations

import os

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")  # less fragmentation near the limit

import argparse  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from minijarvis.bench.steps import (METHODS, attach_visper, autocast, available_ram, environment,  # noqa: E402
                                    fast_random_init, instrumented, make_optimizer, mfu, peak_flops, predictors_fwd_bwd,
                                    prime_optimizer, set_attention, static_bytes, synthetic_batch, train_flops,
                                    train_step, visper_parts)
from minijarvis.bench.report import check_targets, print_report, speed_table  # noqa: E402
from minijarvis.bench.measure import (PartTimer, PeakMemory, interleaved, is_oom, largest_fitting,  # noqa: E402
                                median, part_medians, release, tensor_bytes)
from minijarvis.config import ATTN_IMPLS, PRESETS, MaskConfig, preset  # noqa: E402
from minijarvis.errors import (ArgumentParser, HelpFormatter, InputError, UsageError, add_debug_flag, device as device_flag,  # noqa: E402
                               int_at_least, nonnegative_int, positive_float, positive_int, run_main)
from minijarvis.model import JarvisModel  # noqa: E402
from minijarvis.training.runtime import keep_freed_memory  # noqa: E402

PARTS = ("target_encoder", "mask_sampling", "mask_building", "llm_fwd_bwd", "llm_fwd_bwd_causal")
SUITE = ("gemma2-2b", "vicuna-7b")  # the release's smallest LLM; a 7B Llama (SDPA vs Flex)
MIB = 2 ** 20


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="bench.py", description=__doc__.split("\n")[0],
                       formatter_class=HelpFormatter)
    p.add_argument("--preset", choices=PRESETS, default="tiny", help="LLM + encoders, random weights")
    p.add_argument("--device", type=device_flag, default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--batch-size", type=positive_int, default=None, help="stage-1 batch (default: 16 on CUDA, as the release per device; CPU: 8 tiny, 1 real shape)")
    p.add_argument("--stage2-batch-size", type=positive_int, default=None, help="default: largest power of two that fits (CUDA), the stage-1 batch (CPU)")
    p.add_argument("--max-batch", type=positive_int, default=256, help="upper end of the stage-2 batch search")
    p.add_argument("--steps", type=positive_int, default=None, help="measured steps per method, median reported (default: 30 tiny on CPU, 3 real shape on CPU, 10 CUDA)")
    p.add_argument("--warmup", type=nonnegative_int, default=None, help="unmeasured rounds first; on CPU the first also measures memory (default: 1 tiny on CPU, 2 otherwise)")
    p.add_argument("--caption-len", type=positive_int, default=32, help="stage-1 caption tokens (rows vary by +-25%%)")
    p.add_argument("--chat-len", type=int_at_least(11), default=128, help="stage-2 text tokens around the image")
    p.add_argument("--fixed-length", action="store_true", help="all rows the same length (no padding)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="train.py's --bf16 (default: on except for tiny on CPU)")
    p.add_argument("--grad-ckpt", action=argparse.BooleanOptionalAction, default=None, help="gradient checkpointing (default: on for CUDA)")
    p.add_argument("--llm-layers", type=positive_int, default=None, help="keep the LLM's width, cut its depth (CPU runs of real shapes)")
    p.add_argument("--attn", choices=ATTN_IMPLS, default="auto", help="LLM attention (auto: eager for Gemma2, else sdpa)")
    p.add_argument("--keep-dropped-slots", action="store_true", help="masked steps compute the dropped slots, as the release (train.py's flag)")
    p.add_argument("--attn-compare", action="store_true", help="also time SDPA vs FlexAttention (CUDA, Llama-style LLMs)")
    p.add_argument("--methods", default=None, help="stage-1 methods to time, comma list; jarvis and visper give "
                   "breakdowns, visper also times llava at its length (default: all; llava,jarvis for a real shape on CPU)")
    p.add_argument("--stage2", action=argparse.BooleanOptionalAction, default=None,
                   help="time a stage-2 step too (default: on, except for a real shape on CPU)")
    p.add_argument("--peak-tflops", type=positive_float, default=None, help="GPU bf16 dense peak for MFU if not in bench.steps' table")
    p.add_argument("--threads", type=nonnegative_int, default=None, help="CPU threads (torch.set_num_threads; 0: torch's default); 1 is steadier on a busy machine")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--output", default=None, help="JSON path (default runs/bench/<preset>-<device>.json)")
    p.add_argument("--stage2-padding", action="store_true", help="only print the padding stage 2's grouped batches save (synthetic LLaVA-665k rows, batch 16 x 8 ranks)")
    p.add_argument("--cuda-suite", action="store_true", help=f"{' and '.join(SUITE)} on the GPU, bf16, checkpointing")
    add_debug_flag(p)
    args = p.parse_args(argv)
    if args.methods is not None:
        args.methods = tuple(m for m in args.methods.split(",") if m)
        if not args.methods or set(args.methods) - set(METHODS):
            p.error(f"argument --methods: must be a comma list of {', '.join(METHODS)}, got {','.join(args.methods)!r}")
    full = preset(args.preset).llm_arch["num_hidden_layers"]
    if args.llm_layers is not None and args.llm_layers > full:
        p.error(f"argument --llm-layers: {args.preset} has {full} layers; --llm-layers cuts, it cannot add")
    return args


def settle(args) -> torch.device:
    """Fill the device-dependent defaults in ``args``; return the device.

    A real shape on a CPU is a smoke test of speed and memory at small batch: batch 1, llava
    and jarvis only, two warm-up rounds (the first also measures memory) and three measured
    rounds, no stage 2, so Gemma2-2B prints its table in about 1.5 minutes on two cores (docs/speed.md)."""
    device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    cuda, tiny = device.type == "cuda", args.preset == "tiny"
    real_cpu = not cuda and not tiny
    args.batch_size = args.batch_size or (16 if cuda else 8 if tiny else 1)
    args.steps = args.steps or (10 if cuda else 30 if tiny else 3)
    # a real shape's allocator settles over two rounds (VisPer-LM's paired extra fell 980 -> 456 -> ~0 ms)
    args.warmup = (1 if tiny and not cuda else 2) if args.warmup is None else args.warmup
    if not cuda and args.warmup < 1:
        raise UsageError("--warmup must be >= 1 on CPU: the first warm-up round measures memory")
    args.methods = args.methods or (("llava", "jarvis") if real_cpu else METHODS)
    args.stage2 = (not real_cpu) if args.stage2 is None else args.stage2
    args.bf16 = (cuda or not tiny) if args.bf16 is None else args.bf16
    args.grad_ckpt = cuda if args.grad_ckpt is None else args.grad_ckpt
    if not cuda:
        keep_freed_memory()  # as train.py's CPU runs (runtime.set_cpu_threads)
        args.threads = 1 if tiny and args.threads is None else args.threads  # tiny ops gain nothing from more threads, and a busy machine hurts less
    if args.threads:
        torch.set_num_threads(args.threads)
    return device


def build_model(args, device) -> JarvisModel:
    """JARVIS stage 1 at the preset's shape. Real shapes get fast random weights
    (``bench.steps.fast_random_init``), built directly in bf16 with --bf16: Gemma2-2B takes
    4 s instead of a minute on a CPU. Then, as minijarvis.training.cli._place: frozen networks in bf16,
    what trains in fp32."""
    cfg = preset(args.preset, pretrained=False)
    real = args.preset != "tiny"
    if real:  # timm's trunc_normal_ takes minutes on a CPU for two ViT-Ls
        cfg.ctx_kwargs = {**cfg.ctx_kwargs, "weight_init": "skip"}
        cfg.tgt_kwargs = {**cfg.tgt_kwargs, "weight_init": "skip"}
    if args.llm_layers:
        cfg.llm_arch = {**cfg.llm_arch, "num_hidden_layers": args.llm_layers}
    cfg.llm_attn = args.attn
    cfg.skip_dropped = not args.keep_dropped_slots
    torch.manual_seed(args.seed)
    fast = fast_random_init(args.seed) if real else contextlib.nullcontext()
    default = torch.get_default_dtype()
    if real and args.bf16:
        torch.set_default_dtype(torch.bfloat16)
    try:
        with fast:
            model = JarvisModel(cfg, MaskConfig(), stage="align")
            if "visper" in args.methods:  # its parts join the same instance (bench.steps.method_view)
                attach_visper(model, skip_init=real)
    finally:
        torch.set_default_dtype(default)
    if args.bf16:
        for part in (model.context_encoder, model.target_encoder, model.llm, *(model.visper.targets.values() if model.visper else ())):
            part.to(torch.bfloat16)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    model.to(device).train()
    if args.grad_ckpt:
        model.enable_gradient_checkpointing()
    return model


def batch_of(model, size, stage, args, device):
    return synthetic_batch(model, size, stage, args.caption_len, args.chat_len, args.fixed_length, device, args.seed)


def method_rows(model, opt, batch, methods, times, peaks, outs, args, device, llm_trains) -> dict:
    """Per method: median step, throughput, memory (static + transient), MFU, last loss."""
    size = batch["input_ids"].shape[0]
    tokens = int(batch["attention_mask"].sum()) + size * (model.num_visual - 1)
    n_body = sum(p.numel() for p in model.llm.model.layers.parameters())
    flops = train_flops(n_body, tokens, model.llm.lm_head.weight.numel(),
                        int((batch["labels"][:, 1:] != -100).sum()), llm_trains)
    peak = args.peak_tflops * 1e12 if args.peak_tflops else (
        peak_flops(torch.cuda.get_device_name(device)) if device.type == "cuda" else None)
    rows = {}
    for m in methods:
        sec, static = median(times[m]), static_bytes(model, opt, m)
        rows[m] = dict(step_ms=sec * 1e3, min_ms=min(times[m]) * 1e3, steps_ms=[t * 1e3 for t in times[m]],
                       samples_per_s=size / sec, tokens_per_s=tokens / sec, static_mib=static / MIB,
                       transient_mib=peaks[m] / MIB, peak_mib=(static + peaks[m]) / MIB,
                       mfu=mfu(flops, sec, peak), loss=outs[m][-1]["loss"])
    return dict(batch_size=size, seq_len=batch["input_ids"].shape[1] + model.num_visual - 1, tokens=tokens,
                model_flops=flops, methods=rows)


def timed_steps(model, opt, batch, methods, g, args, device, setup=None, warmup=None, timer=None) -> tuple:
    """Interleaved train steps of ``methods`` (names of ``fns``: method or "impl/method"), each
    instrumented (bench.steps.instrumented) with ``timer``: returns interleaved's (times, peaks,
    outs), every out = {part: seconds} of that step plus its ``loss``."""
    timer = timer or PartTimer(device)

    def step(method):
        def run():
            with instrumented(model, timer):
                loss = train_step(model, opt, batch, method, g, args.bf16, timer)
            return dict(timer.collect(), loss=loss)
        return run
    fns = {name: step(name.split("/")[-1]) for name in methods}
    if "visper" in fns:  # visper's sequence on NTP alone; after each visper step, its predictors alone
        fns["visper_tokens"] = step("visper_tokens")
        fns["visper_predictors"] = lambda: predictors_fwd_bwd(model, timer.captured, args.bf16)
    warmup = args.warmup if warmup is None else warmup
    return interleaved(fns, args.steps, warmup, device, setup, desc=f"{'/'.join(methods)}: rounds")


def measure_stage1(model, args, device) -> dict:
    """The methods' steps, interleaved; JARVIS's and VisPer-LM's breakdowns (module docstring)."""
    batch = batch_of(model, args.batch_size, "align", args, device)
    opt, g = make_optimizer(model, device), torch.Generator().manual_seed(args.seed)
    prime_optimizer(opt)
    timer = PartTimer(device)
    times, peaks, outs = timed_steps(model, opt, batch, args.methods, g, args, device, timer=timer)
    out = method_rows(model, opt, batch, args.methods, times, peaks, outs, args, device, llm_trains=False)
    if "jarvis" in args.methods:
        jv = part_medians(outs["jarvis"])
        out["breakdown_ms"] = dict(target_encoder=jv["target_encoder"], mask_sampling=jv["mask_sampling"],
                                   mask_building=jv["mask_building"], llm_fwd_bwd=jv["llm_forward"] + jv["backward"])
        out["breakdown_steps_ms"] = {k: [o.get(k, 0.0) * 1e3 for o in outs["jarvis"]] for k in jv}
        if "llava" in args.methods:
            ll = part_medians(outs["llava"])
            out["breakdown_ms"]["llm_fwd_bwd_causal"] = ll["llm_forward"] + ll["backward"]
            # what JARVIS adds beyond F_tgt, paired round by round: noise common to a round cancels
            out["extra_ms"] = [(j - l - o["target_encoder"]) * 1e3
                               for j, l, o in zip(times["jarvis"], times["llava"], outs["jarvis"])]
        activations = timer.peaks.get("target_encoder")  # CPU: seen in the memory round
        if activations is None:  # CUDA: one more F_tgt forward; its allocator statistics are free
            with PeakMemory(device) as pm, autocast(device, args.bf16):
                model.target_encoder(batch["images"])
            activations = pm.transient
        out["target_encoder_mib"] = dict(weights=tensor_bytes(model.target_encoder.parameters()) / MIB,
                                         activations=activations / MIB)
    if "visper" in args.methods:
        out.update(visper_parts(times, outs))
    return out


def measure_attention(model, args, device) -> dict:
    """Stage-1 llava and jarvis steps with SDPA (JARVIS: dense additive 4D mask) vs
    FlexAttention (JARVIS: BlockMask from attn_mask.to_block_mask); same weights, interleaved."""
    if device.type != "cuda":
        return dict(skipped="FlexAttention has no backward on CPU (DESIGN.md section 5)")
    if model.llm.config.model_type == "gemma2":
        return dict(skipped="Gemma2 runs eager (soft-capping); compare on a Llama-style preset")
    batch, before = batch_of(model, args.batch_size, "align", args, device), model.cfg.llm_attn
    opt, g = make_optimizer(model, device), torch.Generator().manual_seed(args.seed)
    prime_optimizer(opt)
    names = [f"{impl}/{m}" for impl in ("sdpa", "flex_attention") for m in ("llava", "jarvis")]
    setup = {name: (lambda impl=name.split("/")[0]: set_attention(model, impl)) for name in names}
    try:  # two more warm-up rounds: the first Flex calls compile (fwd and bwd, per mask kind)
        times, peaks, _ = timed_steps(model, opt, batch, names, g, args, device, setup, args.warmup + 2)
    finally:
        set_attention(model, "sdpa")
        model.cfg.llm_attn = before
    return {k: dict(step_ms=median(v) * 1e3, transient_mib=peaks[k] / MIB) for k, v in times.items()}


def dict_args(args, **changes) -> argparse.Namespace:
    return argparse.Namespace(**{**vars(args), **changes})


def fits(model, opt, batch, args, device) -> bool:
    """One stage-2 step at this batch; False (memory released) if CUDA runs out of memory."""
    try:
        train_step(model, opt, batch, "llava", torch.Generator(), args.bf16)
        return True
    except (torch.cuda.OutOfMemoryError, RuntimeError) as err:  # its traceback dies with the block
        if not is_oom(err):
            raise
    opt.zero_grad(set_to_none=True)
    release(device)
    return False


def measure_stage2(model, args, device) -> dict:
    """LLaVA stage 2: F_tgt, z, proj_tgt dropped; LLM + proj train (fp32 master weights with --bf16)."""
    model.target_encoder = model.proj_tgt = model.z = model.sampler = None
    model.task_tokens, model.visper, model.num_slots = None, None, model.num_visual  # VisPer-LM's too
    model.llm.requires_grad_(True)
    release(device)
    weights, n = "fp32" + (" master, bf16 autocast" if args.bf16 else ""), sum(p.numel() for p in model.llm.parameters())
    ram = available_ram() if device.type == "cpu" else None
    if ram is not None and n * (16 - 2 * args.bf16) > 0.8 * ram:  # fp32 weights, grads, 2 AdamW states
        if not args.bf16 or n * 6 > 0.8 * ram:  # bf16 grads + 2 states on top of the bf16 weights
            return dict(skipped=f"{n / 1e9:.2f}B trainable parameters: grads + AdamW do not fit in {ram / 2**30:.0f} GiB RAM")
        weights = "bf16 (fp32 master weights do not fit in RAM)"
    elif args.bf16:
        model.llm.float()
    opt = make_optimizer(model, device)
    prime_optimizer(opt)

    def fit(size):
        return fits(model, opt, batch_of(model, size, "finetune", args, device), args, device)
    if device.type == "cuda" and not fit(1):
        del opt
        model.llm.to(torch.bfloat16)  # the release shards fp32 masters over 8 GPUs (train.py: FSDP2)
        release(device)
        weights = "bf16 (fp32 master weights do not fit on one GPU)"
        opt = make_optimizer(model, device)
        prime_optimizer(opt)
    size = args.stage2_batch_size or (largest_fitting(fit, args.max_batch) if device.type == "cuda" else args.batch_size)
    if size == 0:
        return dict(skipped="batch 1 does not fit", weights=weights)
    while True:
        batch, g = batch_of(model, size, "finetune", args, device), torch.Generator()
        try:
            times, peaks, outs = timed_steps(model, opt, batch, ("llava",), g, args, device)
            break
        except (torch.cuda.OutOfMemoryError, RuntimeError) as err:
            if not (is_oom(err) and size > 1):
                raise
        size //= 2  # fragmentation near the limit: step back
        opt.zero_grad(set_to_none=True)
        release(device)
    out = method_rows(model, opt, batch, ("llava",), times, peaks, outs, args, device, llm_trains=True)
    return dict(out, weights=weights, batch_searched=args.stage2_batch_size is None and device.type == "cuda")


def run(args) -> dict:
    device = settle(args)
    start = time.perf_counter()
    print(f"building {args.preset} (random weights) on {device.type} ...", file=sys.stderr, flush=True)
    model = build_model(args, device)
    layers, full = model.llm.config.get_text_config().num_hidden_layers, preset(args.preset).llm_arch["num_hidden_layers"]
    name = args.preset + (f" ({layers} of {full} layers)" if layers != full else "")
    res = dict(env=environment(device, getattr(args, "command", None)), args=vars(args).copy(),
               model=dict(name=name, build_s=time.perf_counter() - start, llm_layers=layers, grid=model.grid,
                          jepa_layer=model.jepa_layer, attn=model.llm.config._attn_implementation,
                          llm_params=sum(p.numel() for p in model.llm.parameters())))
    res["stage1"] = measure_stage1(model, args, device)
    res["targets"] = check_targets(res["stage1"])
    if args.attn_compare:
        try:  # a compile failure must not cost the stage-2 figures
            res["attention"] = measure_attention(model, args, device)
        except Exception as err:  # noqa: BLE001
            traceback.print_exc()
            res["attention"] = dict(error=repr(err))
    if args.stage2:
        res["stage2"] = measure_stage2(model, args, device)
    res["speed_table"] = speed_table([res])
    tag = f"-{layers}l" if layers != full else ""
    path = Path(args.output or f"runs/bench/{args.preset}{tag}-{device.type}.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, default=str))
    print_report(res)
    print(f"JSON: {path}")
    return res


def cuda_suite(args) -> dict:
    """Every SUITE preset on the GPU (bf16, checkpointing, batch 16, stage-2 search); SDPA vs
    Flex on the Llama-style one. A preset that fails is reported and the next one still runs."""
    if not torch.cuda.is_available():
        raise UsageError("--cuda-suite needs a CUDA GPU (torch.cuda.is_available() is False)")
    results = {}
    for name in SUITE:
        sub = dict_args(args, preset=name, device="cuda", llm_layers=None, output=None,
                        attn_compare=name != "gemma2-2b", cuda_suite=False)
        try:
            results[name] = run(sub)
        except Exception as err:  # noqa: BLE001 - keep the other preset's figures
            traceback.print_exc()
            results[name] = dict(error=repr(err))
        release(torch.device("cuda"))
    path = Path(args.output or "runs/bench/cuda-suite.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1, default=str))
    print("\ndocs/speed.md rows:\n" + "\n".join(speed_table(r for r in results.values() if "stage1" in r)))
    return results


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.output and Path(args.output).is_dir():
        raise InputError(f"{args.output}: a folder; --output is the JSON file to write")
    args.command = " ".join(["python bench.py", *(sys.argv[1:] if argv is None else argv)])
    if args.stage2_padding:  # no model: the data order alone (minijarvis/bench/padding.py)
        from minijarvis.bench.padding import report, stage2_padding
        result = stage2_padding(seed=args.seed)
        print(report(result))
        return result
    return cuda_suite(args) if args.cuda_suite else run(args)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="bench.py"))
