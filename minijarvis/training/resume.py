"""--resume: a run continues with the plan it was started with, or not at all.

A checkpoint's ``config.json`` holds every setting of its run; ``train.py --resume`` takes them
all from it. Its optimizer steps, data order and LR schedule (warm-up and cosine over the planned
total) were fixed at the start, so a flag given with ``--resume`` must agree with the saved run:
one that differs (``--max-steps 3 -> 6``, ``--lr``, ``--batch-size``, ...) is refused, each named
with its old and new value. Only the flags in :data:`RESUME_FREE`, which change no result, may
differ, and they apply. train.py's Trainer.resume refuses a different number of processes the
same way, and a different planned total (the data changed) as an unusable input.
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from minijarvis.config import ENCODERS, PRESETS, MaskConfig, TrainConfig, load_config, preset
from minijarvis.errors import InputError, UsageError

# Flags that may differ from the checkpoint's run under --resume: they change no result.
RESUME_FREE = ("save_every", "log_every", "threads", "num_workers", "report_to")


def _run_flags(configs: dict) -> dict:
    """What each train.py flag was for a checkpoint's run, in the flag's own terms (dest -> value).
    Flags named like a config field (the rule) map to it; the others are spelled out here."""
    train, model, mask = configs["train"], configs["model"], configs.get("mask") or MaskConfig()
    archs = {json.dumps(preset(p).llm_arch, sort_keys=True): p for p in PRESETS}
    flags = {**dataclasses.asdict(model), **dataclasses.asdict(train)}
    flags.update(
        preset=archs.get(json.dumps(model.llm_arch, sort_keys=True)),  # None: an --llm run
        llm=None if model.llm_arch else model.llm_name,
        context_encoder=(model.ctx_encoder, model.ctx_kwargs),
        target_encoder=(model.tgt_encoder, model.tgt_kwargs),
        context_weights=model.ctx_weights, target_weights=model.tgt_weights,
        visper_target=list(model.visper_targets) if model.method == "visper" else None,
        context_layer=model.ctx_layer, context_norm=None if model.ctx_norm is None else (
            "on" if model.ctx_norm else "off"),
        random_init=not (model.llm_pretrained or model.ctx_pretrained or model.tgt_pretrained),
        bidirectional_visual="on" if model.resolved_bidirectional_visual() else "off",
        keep_dropped_slots=not model.skip_dropped, mask_clean=not mask.mask_faithful,
        paper_context_aspect=tuple(mask.mask_context_aspect) != (1.0, 1.0), mask_min_keep=mask.mask_min_keep)
    return flags


def _same(dest: str, old, new) -> bool:
    if dest in ("context_encoder", "target_encoder"):
        new = ENCODERS.get(new, (new, {}))
    if dest in ("data", "image_folder", "init", "context_weights", "target_weights"):
        return (os.path.normpath(old) if old else "") == (os.path.normpath(new) if new else "")
    if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
        return list(old) == list(new)
    return old == new


def _shown(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple):  # (timm name, kwargs)
        return str(value[0])
    return "not set" if value in (None, "") else str(value)


def resume_conflicts(args, configs: dict) -> list[str]:
    """``--flag old -> new`` for each flag given with --resume whose value differs from the
    checkpoint's run (--resume, --output-dir, --debug and RESUME_FREE excepted)."""
    saved, out = _run_flags(configs), []
    for dest in sorted(args.given - {"resume", "output_dir", "debug", *RESUME_FREE}):
        flag, new = "--" + dest.replace("_", "-"), getattr(args, dest)
        if dest not in saved:
            out.append(f"{flag} (not part of a checkpoint's settings)")
        elif not (dest == "preset" and saved[dest] is None) and not _same(dest, saved[dest], new):
            out.append(f"{flag} {_shown(saved[dest])} -> {_shown(new)}")
    return out


def resume_config(args, ckpt: Path) -> TrainConfig:
    """The checkpoint's TrainConfig, with the plan-neutral RESUME_FREE flags applied; UsageError
    naming every other flag whose value differs from the checkpoint's run."""
    configs = load_config(ckpt / "config.json")
    if "train" not in configs or "model" not in configs:
        raise InputError(f"{ckpt / 'config.json'}: no train or model settings; not a resumable checkpoint")
    conflicts = resume_conflicts(args, configs)
    if conflicts:
        raise UsageError(
            f"--resume continues {ckpt} with the settings its run started with; "
            f"{'this flag differs' if len(conflicts) == 1 else 'these flags differ'} from them: "
            f"{'; '.join(conflicts)}. Drop {'it' if len(conflicts) == 1 else 'them'} to finish "
            "that run as planned (its LR schedule spans its planned steps), or train with the new "
            "values in a new --output-dir")
    free = {k: getattr(args, k) for k in RESUME_FREE if k in args.given and hasattr(configs["train"], k)}
    return dataclasses.replace(configs["train"], **free)
