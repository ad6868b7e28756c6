"""train.py's flags and how they become a model, a data set and a TrainConfig.

Every flag maps onto one config field (``--jepa-lambda`` -> ``ModelConfig.jepa_lambda``,
``--batch-size`` -> ``TrainConfig.batch_size``, ...). A flag left unset keeps the preset's
value, or for ``--stage finetune --init DIR`` the stage-1 checkpoint's; ``--resume`` takes
every setting from the checkpoint it resumes and refuses flags that differ (minijarvis/training/resume.py).
Invalid values are refused at start-up by argparse types (minijarvis/errors.py), unusable
files and folders by :func:`check_inputs` before anything is built.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from minijarvis.config import (CONTEXT_LAYERS, ENCODERS, IMAGE_ASPECTS, LLAVA_STAGE_DEFAULTS, METHODS,
                     PRESETS, STAGES, TOY_CAPTION_ENCODER, TOY_EXPERT, TRACKERS, MaskConfig,
                     TrainConfig, is_toy, preset)
from minijarvis.data.llava import LlavaDataset, make_collate, read_llava_json
from minijarvis.errors import (ArgumentParser, HelpFormatter, InputError, UsageError, add_debug_flag, brief, fraction, int_at_least,
                     nonnegative_float, nonnegative_int, positive_float, positive_int,
                     positive_int_or, probability)
from minijarvis.model import JarvisModel
from minijarvis.training.resume import RESUME_FREE, resume_config
from minijarvis.training.runtime import DistInfo, print0
from minijarvis.training.checkpoint import load_checkpoint


def context_layer(text: str) -> int:
    """--context-layer: "penultimate" (-2), "last" (-1) or a block index."""
    if text in CONTEXT_LAYERS:
        return CONTEXT_LAYERS[text]
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected {' or '.join(CONTEXT_LAYERS)} or a block index, got {text!r}") from None


def encoder_name(text: str) -> str:
    """argparse type: an encoder key of config.ENCODERS or a timm model name."""
    import timm

    if text in ENCODERS or timm.is_model(text):
        return text
    raise argparse.ArgumentTypeError(f"unknown encoder {text!r}: a timm model name "
                                     f"(timm.list_models) or one of {', '.join(ENCODERS)}")


def _given(parser: argparse.ArgumentParser, argv) -> frozenset[str]:
    """Destinations set on the command line, told apart from defaults by parsing again with
    every default suppressed (abbreviations and ``--flag=value`` included)."""
    defaults = [(action, action.default) for action in parser._actions]
    for action, _ in defaults:
        action.default = argparse.SUPPRESS
    try:
        return frozenset(vars(parser.parse_args(argv)))
    finally:
        for action, default in defaults:
            action.default = default


def parse_args(argv=None) -> argparse.Namespace:
    p = ArgumentParser(prog="train.py", description="Train minijarvis (JARVIS / VisPer-LM / LLaVA, two stages).",
                       formatter_class=HelpFormatter)
    a = p.add_argument_group("what to train")
    a.add_argument("--stage", choices=STAGES, default="align", help="align = stage 1 (captions), finetune = stage 2 (instructions)")
    a.add_argument("--method", choices=METHODS, default=None, help="row of the paper's table (default: jarvis, or the --init checkpoint's)")
    a.add_argument("--preset", choices=PRESETS, default="tiny", help="LLM + encoders; tiny runs offline on a CPU")
    a.add_argument("--llm", default=None, help="hub id or local directory of a causal LM (overrides the preset's LLM)")
    a.add_argument("--context-encoder", type=encoder_name, default=None, help=f"timm model name or one of {', '.join(ENCODERS)}")
    a.add_argument("--context-layer", type=context_layer, default=None, help="block F_ctx reads: penultimate, last or an index (negative from the end) (default: the release's per family, last for SigLIP, penultimate otherwise)")
    a.add_argument("--context-norm", choices=("on", "off"), default=None, help="F_ctx through the encoder's final norm (default: on for SigLIP, off otherwise)")
    a.add_argument("--target-encoder", type=encoder_name, default=None, help="timm model name or an encoder key, as above")
    a.add_argument("--context-weights", default="", help="local weights file for the context encoder")
    a.add_argument("--target-weights", default="", help="local weights file for the target encoder")
    a.add_argument("--random-init", action="store_true", help="random weights for every network, the tiny preset's toy parts included (offline speed/memory runs)")
    a.add_argument("--init", default="", help="stage-1 output directory to start stage 2 from")
    a.add_argument("--resume", action="store_true", help="continue OUTPUT/checkpoint exactly: every setting comes from it; "
                   "other flags must match it, except " + ", ".join(f"--{f.replace('_', '-')}" for f in RESUME_FREE))
    m = p.add_argument_group("method (defaults: the official release)")
    m.add_argument("--jepa-lambda", type=probability, default=None, help="probability that a stage-1 step skips JEPA (release 0.2)")
    m.add_argument("--jepa-layer", type=positive_int, default=None, help="layer j of h_j (default num_layers // 4; VIRAL: // 2)")
    m.add_argument("--jepa-distance", choices=("cosine", "smooth_l1"), default=None, help="release: raw -cos; I-JEPA: smooth_l1")
    m.add_argument("--bidirectional-visual", choices=("on", "off"), default=None, help="all visual tokens attend each other (release: on for jarvis only)")
    m.add_argument("--pos-embed", action="store_true", default=None, help="paper: z + phi(i); release: z alone")
    m.add_argument("--keep-dropped-slots", action="store_true", default=None, help="masked steps compute the dropped slots too, as the release (same losses, more compute)")
    m.add_argument("--mask-clean", action="store_true", help="sampler without the release's quirks")
    m.add_argument("--mask-min-keep", type=nonnegative_int, default=None, help="every mask block holds more tokens than this (default: the release's 10, lowered to what a small grid allows: the tiny 6x6 grid 3)")
    m.add_argument("--lambda-per-rank", action="store_true", help="each rank draws the lambda coin itself, as the release (ranks may take different branches)")
    m.add_argument("--paper-context-aspect", action="store_true", help="context block aspect in (0.75, 1.5) as the paper's text says (release: 1.0)")
    v = p.add_argument_group("VisPer-LM (--method visper; defaults: the release)")
    v.add_argument("--visper-target", action="append", type=_target_spec, default=None, metavar="SPEC",
                   help="a target encoder, repeatable, in task-token order: a preset (tiny-depth, "
                        "depth-anything-v2-l, oneformer-swin-l, unclip-vit-h, dinov2-l, ...) and/or "
                        "key=value parts: name=depth,encoder=<timm>,rule=tokens|pooled,blocks=4+11,"
                        "layers=8+20,weights=PATH,timm.<kwarg>=V; unset: the preset's three experts")
    v.add_argument("--visper-weight", type=nonnegative_float, default=None, metavar="W", help="L = L_NTP + weight * sum of the embedding losses (release 0.5)")
    v.add_argument("--visper-contrastive", type=nonnegative_float, default=None, metavar="C", help="share of InfoNCE in each embedding loss (release 0.3)")
    v.add_argument("--visper-temperature", type=float, default=None, metavar="S", help="initial log logit scale of InfoNCE (release 2.0)")
    v.add_argument("--visper-attend-padding", action="store_true", default=None, help="predictors attend padding positions, as the release")
    d = p.add_argument_group("data")
    d.add_argument("--data", default="", help="LLaVA JSON (558k captions / 665k instructions); default: built-in synthetic shapes")
    d.add_argument("--image-folder", default="", help="folder the JSON's image paths are relative to")
    d.add_argument("--synthetic-size", type=positive_int, default=512, help="records of built-in data")
    d.add_argument("--plain-style", choices=("release", "llava"), default="release", help="stage-1 template: release = <image>+caption; llava adds BOS and a trailing newline")
    d.add_argument("--image-aspect", choices=IMAGE_ASPECTS, default=None, help="fit images to the encoder's square: crop = CLIP processor (short side, centre crop), pad = square in the encoder's mean colour, resize = distort (default: the release's, crop in stage 1, pad in stage 2)")
    d.add_argument("--max-length", type=int_at_least(8), default=None, help="tokens per sequence incl. image slots (lower this if you run out of memory)")
    d.add_argument("--blank-images", action="store_true", help="replace every image by a blank one (the encoder's mean colour) once loaded: what the text alone teaches (study.py's llava-blank bound)")
    d.add_argument("--strict", action="store_true", help="stop on the first bad record instead of skipping and counting it")
    d.add_argument("--group-by-modality-length", action=argparse.BooleanOptionalAction, default=None, help="batches of image rows or of text-only rows, length-sorted mega-batches dealt to ranks (LLaVA's sampler; default: on in stage 2, as the release)")
    d.add_argument("--num-workers", type=nonnegative_int, default=0, help="data loader worker processes")
    o = p.add_argument_group("optimisation (default: LLaVA-1.5's for real presets)")
    o.add_argument("--max-steps", type=positive_int_or(-1, "use --epochs"), default=-1, help="optimizer steps (-1: --epochs passes over the data)")
    o.add_argument("--epochs", type=positive_float, default=1.0, help="passes over the data")
    o.add_argument("--batch-size", type=positive_int, default=None, help="per device (lower this and raise --grad-accum if you run out of memory)")
    o.add_argument("--grad-accum", type=positive_int, default=None, help="micro-batches per step (default: reach LLaVA's global batch)")
    o.add_argument("--lr", type=positive_float, default=None, help="peak learning rate (LLaVA: 1e-3 stage 1, 2e-5 stage 2)")
    o.add_argument("--weight-decay", type=nonnegative_float, default=0.0, help="AdamW weight decay")
    o.add_argument("--warmup-ratio", type=fraction, default=0.03, help="linear warm-up fraction of the cosine schedule")
    o.add_argument("--max-grad-norm", type=positive_float, default=1.0, help="gradient clipping")
    o.add_argument("--seed", type=nonnegative_int, default=0, help="data order, masks and lambda draws (identical on every rank)")
    o.add_argument("--bf16", action="store_true", help="bfloat16 autocast; frozen networks stored in bf16 (CUDA)")
    o.add_argument("--gradient-checkpointing", action="store_true", help="recompute LLM activations in backward (saves memory)")
    i = p.add_argument_group("output")
    i.add_argument("--output-dir", default="", help="default runs/<preset>-<method>-<stage>")
    i.add_argument("--save-every", type=nonnegative_int, default=0, help="optimizer steps between resumable checkpoints (0: only at the end)")
    i.add_argument("--threads", type=nonnegative_int, default=0, help="CPU threads (0: one for small models, torch's default otherwise)")
    i.add_argument("--log-every", type=positive_int, default=1, help="optimizer steps between log lines")
    add_debug_flag(i)
    i.add_argument("--report-to", choices=TRACKERS, default="none", help="also send log.jsonl's scalars and the config to this tracker (wandb: offline unless WANDB_MODE is set)")
    args = p.parse_args(argv)
    args.given = _given(p, argv)
    if args.stage == "finetune" and not (args.init or args.resume) and args.preset == "tiny" and not args.llm:
        p.error("--stage finetune needs --init <stage-1 output dir> (or --resume)")
    if (args.init or args.resume) and (args.context_layer is not None or args.context_norm is not None):
        p.error("--context-layer/--context-norm choose what a new model's context encoder reads; "
                "with --init or --resume it is the checkpoint's (its projector was trained on it)")
    if args.init and args.stage == "align":
        p.error("--init starts stage 2 from a stage-1 checkpoint: use it with --stage finetune")
    if args.image_folder and not args.data and not args.resume:
        p.error("--image-folder is where --data's images are: pass --data too")
    if "synthetic_size" in args.given and args.data:
        p.error("--synthetic-size sizes the built-in data: it does nothing with --data")
    return args


def _target_spec(text: str) -> str:
    """argparse type of --visper-target: checked at start-up, kept as text in the config."""
    from minijarvis.targets import parse_target
    try:
        parse_target(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


@dataclass
class Run:
    model: JarvisModel
    dataset: LlavaDataset
    collate: object
    train_cfg: TrainConfig
    output: Path


def _model_overrides(args) -> dict:
    """ModelConfig fields set explicitly on the command line."""
    out = dict(method=args.method, jepa_lambda=args.jepa_lambda, jepa_layer=args.jepa_layer,
               jepa_distance=args.jepa_distance, pos_embed=args.pos_embed,
               image_aspect=args.image_aspect, max_length=args.max_length,
               bidirectional_visual=None if args.bidirectional_visual is None else args.bidirectional_visual == "on",
               skip_dropped=None if args.keep_dropped_slots is None else False,
               visper_targets=tuple(args.visper_target) if args.visper_target else None,
               visper_weight=args.visper_weight, visper_contrastive=args.visper_contrastive,
               visper_temperature=args.visper_temperature,
               visper_attend_padding=args.visper_attend_padding)
    return {k: v for k, v in out.items() if v is not None}


def _encoder(name: str, random_init: bool) -> tuple[str, dict, bool, str]:
    """(timm name, kwargs, hub weights?, weights file): tiny-clip / tiny-dinov2 are the toy
    world's caption encoder and expert unless --random-init."""
    timm_name, kwargs = ENCODERS.get(name, (name, {}))
    toy = {"tiny-clip": TOY_CAPTION_ENCODER, "tiny-dinov2": TOY_EXPERT}.get(name)
    weights = str(toy) if toy and not random_init else ""
    return timm_name, dict(kwargs), not (random_init or name.startswith("tiny")), weights


def new_model_config(args):
    real = args.preset != "tiny" or bool(args.llm)
    # tiny: the toy world's pretrained parts unless --random-init (preset's default, None)
    cfg = preset(args.preset, pretrained=False if args.random_init else (True if real else None))
    if args.llm:
        if args.random_init:
            raise UsageError("--random-init builds a preset's architecture; with --llm, weights come from it")
        cfg = dataclasses.replace(cfg, llm_name=args.llm, llm_pretrained=True, llm_arch={}, tokenizer=args.llm)
    for flag, weights, prefix in ((args.context_encoder, args.context_weights, "ctx"),
                                  (args.target_encoder, args.target_weights, "tgt")):
        if flag:  # another encoder: the preset's weights file (the toy part's) no longer fits
            name, kwargs, pretrained, file = _encoder(flag, args.random_init)
            cfg = dataclasses.replace(cfg, **{f"{prefix}_encoder": name, f"{prefix}_kwargs": kwargs,
                                              f"{prefix}_pretrained": pretrained, f"{prefix}_weights": file})
        if weights:
            cfg = dataclasses.replace(cfg, **{f"{prefix}_weights": weights})
    cfg = dataclasses.replace(cfg, ctx_layer=args.context_layer,
                              ctx_norm=None if args.context_norm is None else args.context_norm == "on")
    return dataclasses.replace(cfg, **_model_overrides(args)), real


def new_train_config(args, real: bool, world: int, output: Path) -> TrainConfig:
    """LLaVA-1.5's per-stage batch and learning rate for real models; small ones for tiny."""
    stage = args.stage
    bs = (16 if real else 8) if args.batch_size is None else args.batch_size
    accum = args.grad_accum
    if accum is None:
        accum = max(1, LLAVA_STAGE_DEFAULTS[stage]["global_batch"] // (bs * world)) if real else 1
    lr = args.lr
    if lr is None:
        lr = LLAVA_STAGE_DEFAULTS[stage]["lr"] if real else (1e-3 if stage == "align" else 1e-4)
    cfg = TrainConfig(stage=stage, output_dir=str(output), data=args.data, image_folder=args.image_folder,
                      init=args.init, synthetic_size=args.synthetic_size, max_steps=args.max_steps,
                      epochs=args.epochs, batch_size=bs, grad_accum=accum, lr=lr,
                      weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                      max_grad_norm=args.max_grad_norm, seed=args.seed, bf16=args.bf16,
                      gradient_checkpointing=args.gradient_checkpointing, save_every=args.save_every,
                      log_every=args.log_every, num_workers=args.num_workers, strict=args.strict,
                      plain_style=args.plain_style, lambda_per_rank=args.lambda_per_rank,
                      group_by_modality_length=(stage == "finetune" if args.group_by_modality_length is None
                                                else args.group_by_modality_length),
                      blank_images=args.blank_images, report_to=args.report_to)
    cfg.validate()
    return cfg


def check_inputs(args) -> None:
    """Files and folders the flags name, checked before anything is built: one InputError each.
    (--data and --image-folder: :func:`_read_data`, once --resume has taken them from its run.)"""
    for flag, path in (("--context-weights", args.context_weights), ("--target-weights", args.target_weights)):
        if path and not Path(path).is_file():
            raise InputError(f"{path}: no such file ({flag})")
    if args.init:
        from minijarvis.training.checkpoint import check_checkpoint_dir
        check_checkpoint_dir(args.init)
    if args.llm and (Path(args.llm).exists() or args.llm.startswith((".", "/", "~"))) \
            and not (Path(args.llm).expanduser() / "config.json").is_file():
        raise InputError(f"{args.llm}: not a model folder (no config.json) (--llm)")


def _read_data(data: str, image_folder: str) -> list | None:
    """The records of --data (None: the built-in data), read and checked before any model loads."""
    if data and not Path(data).is_file():
        what = "a folder; --data is the LLaVA JSON file" if Path(data).is_dir() else "no such file"
        raise InputError(f"{data}: {what} (--data)")
    if image_folder and not Path(image_folder).is_dir():
        raise InputError(f"{image_folder}: no such folder (--image-folder)")
    return read_llava_json(data) if data else None


def output_dir(args) -> Path:
    """--output-dir, or the default runs/<preset>-<method>-<stage> (stage 2: <init's name>-finetune)."""
    if args.output_dir:
        return Path(args.output_dir)
    name = Path(args.llm).name if args.llm else args.preset
    if args.init:
        name = Path(args.init).name.rsplit("-align", 1)[0]
        return Path("runs") / f"{name}-finetune"
    return Path("runs") / f"{name}-{args.method or 'jarvis'}-{args.stage}"


def build_run(args, info: DistInfo) -> Run:
    output = output_dir(args)  # train.main checked it and holds its lock (training/lock.py)
    check_inputs(args)
    tcfg = None
    if args.resume:
        ckpt = output / "checkpoint"
        from minijarvis.training.runtime import recover_checkpoint
        recover_checkpoint(ckpt)  # a crash between the two renames of an atomic save
        if not (ckpt / "trainer.json").exists():
            raise InputError(f"{ckpt}: no resumable checkpoint to --resume (train.py writes one every "
                             "--save-every steps, on Ctrl-C and at the end); check --output-dir")
        tcfg = resume_config(args, ckpt)
    # The data is read before any model loads: a bad file stops the run at once.
    records = _read_data(tcfg.data if tcfg else args.data, tcfg.image_folder if tcfg else args.image_folder)
    if args.resume:
        model = load_checkpoint(ckpt)
    elif args.stage == "finetune" and args.init:
        try:
            model = load_checkpoint(args.init, stage="finetune", **_model_overrides(args))
        except ValueError as e:  # a flag this checkpoint's model cannot take
            raise UsageError(brief(e)) from e
        real = model.cfg.llm_pretrained and not is_toy(model.cfg)  # toy LLM: tiny defaults
        tcfg = new_train_config(args, real, info.world_size, output)
    else:
        mcfg, real = new_model_config(args)
        mask = MaskConfig(mask_faithful=not args.mask_clean,
                          mask_min_keep=args.mask_min_keep,
                          mask_context_aspect=(0.75, 1.5) if args.paper_context_aspect else (1.0, 1.0))
        torch.manual_seed(args.seed)  # random-init networks are identical on every rank
        try:
            model = JarvisModel(mcfg, mask, args.stage)
        except ValueError as e:  # a flag the model cannot take (--jepa-layer past the LLM, ...)
            raise UsageError(brief(e)) from e
        except OSError as e:  # a hub id that cannot be fetched, a weights file timm cannot read
            raise InputError(f"cannot load the model's weights: {brief(e)}") from e
        tcfg = new_train_config(args, real, info.world_size, output)
    if model.cfg.max_length <= model.num_slots:
        raise UsageError(f"--max-length {model.cfg.max_length} leaves no room for text after the "
                         f"image's {model.num_slots} slots (visual slots and task tokens); raise it")
    output.mkdir(parents=True, exist_ok=True)
    if model.visper is not None and model.cfg.llm_pretrained and not is_toy(model.cfg):
        random = [s.name for s in model.visper.specs if not (s.pretrained or s.weights)]
        if random:
            print0(f"warning: VisPer-LM targets {random} have random weights; give each a local "
                   "file with --visper-target <preset>,weights=PATH")
    _place(model, tcfg, info)
    from minijarvis.training.runtime import set_cpu_threads
    set_cpu_threads(model, info.device, args.threads)
    data, folder = tcfg.data, tcfg.image_folder
    if not data:
        data, folder = _synthetic(tcfg, info)
    dataset = LlavaDataset(data if records is None else records, folder or ".", model.tokenizer,
                           stage=model.stage,
                           image_size=model.image_size, image_mean=model.image_mean,
                           aspect=model.image_aspect, max_length=model.cfg.max_length,
                           num_visual=model.num_slots, strict=tcfg.strict,
                           plain_style=tcfg.plain_style, source=data, blank_images=tcfg.blank_images)
    if dataset.num_invalid:
        from minijarvis.data.llava import format_skips
        print0("at load, " + format_skips(dataset.problems))
    pad = model.tokenizer.pad_token_id or 0
    return Run(model, dataset, make_collate(pad, model.image_size), tcfg, output)


def _place(model: JarvisModel, tcfg: TrainConfig, info: DistInfo) -> None:
    """Device, dtypes and checkpointing. Frozen networks go to bf16 with --bf16 on CUDA (the
    release trains in bf16); what trains stays fp32 under autocast (its master weights)."""
    if tcfg.bf16 and info.device.type == "cuda":
        targets = tuple(model.visper.targets.values()) if model.visper is not None else ()
        for part in (model.context_encoder, model.target_encoder, *targets):
            if part is not None:
                part.to(torch.bfloat16)
        if model.stage == "align":
            model.llm.to(torch.bfloat16)
    model.to(info.device)
    model.train()
    if tcfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()


def _synthetic(tcfg: TrainConfig, info: DistInfo) -> tuple[str, str]:
    """Built-in shapes data cached as a LLaVA folder (rank 0 writes, the others wait)."""
    from minijarvis.data.synthetic import write_llava_folder
    kind = "caption" if tcfg.stage == "align" else "instruct"
    folder = Path("runs") / "data" / f"shapes-{kind}-{tcfg.synthetic_size}-seed{tcfg.seed}"
    if info.rank == 0:
        write_llava_folder(folder, kind, tcfg.synthetic_size, seed=tcfg.seed)
    if info.distributed:
        torch.distributed.barrier()
    return str(folder / f"{kind}.json"), str(folder)
