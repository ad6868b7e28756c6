"""Checkpoints: safetensors weights + config.json + the tokenizer.

A checkpoint directory holds

    config.json        {"model": ModelConfig, "mask": MaskConfig, "train": ..., "stage": ...}
    model.safetensors  every tensor that is not reproducible from its source: what trained
                       (proj, z, proj_tgt, task tokens, predictors; the LLM after stage 2)
                       and any randomly initialised
                       network (so a tiny offline model reloads bit for bit)
    tokenizer/         the tokenizer, so loading needs neither the hub nor the builder

Loading never unpickles: safetensors and JSON only.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from safetensors.torch import load_file

from minijarvis.config import ModelConfig, load_config, save_config
from minijarvis.errors import InputError, brief
from minijarvis.llm import load_tokenizer
from minijarvis.model import JarvisModel
from minijarvis.training.runtime import save_tensors
from minijarvis.visper import parse_targets

WEIGHTS, CONFIG, TOKENIZER = "model.safetensors", "config.json", "tokenizer"
# Parts a stage-2 model may lack that a stage-1 checkpoint holds: JARVIS's additions and
# VisPer-LM's head (predictors, temperatures, targets). VisPer-LM's task tokens stay.
STAGE1_ONLY = ("z", "proj_tgt.", "target_encoder.", "visper.")
def saved_prefixes(cfg: ModelConfig, stage: str) -> tuple[str, ...]:
    """State-dict prefixes a checkpoint of a ``stage`` model stores (see the module docstring)."""
    keep = ["proj.", "z", "proj_tgt.", "task_tokens.", "visper.predictors.", "visper.log_scales."]
    if stage == "finetune" or not cfg.llm_pretrained:
        keep.append("llm.")
    if not (cfg.ctx_pretrained or cfg.ctx_weights):
        keep.append("context_encoder.")
    if not (cfg.tgt_pretrained or cfg.tgt_weights):
        keep.append("target_encoder.")
    if cfg.method == "visper":  # randomly initialised VisPer-LM targets, so a resume is exact
        keep += [f"visper.targets.{s.name}." for s in parse_targets(cfg.visper_targets)
                 if not (s.pretrained or s.weights)]
    return tuple(keep)


def _selected(state: dict, prefixes) -> dict:
    """Keys under ``prefixes``, each storage once (tied embeddings are stored under one name)."""
    out, seen = {}, set()
    for key, value in state.items():
        ptr = (value.untyped_storage().data_ptr(), value.storage_offset(), tuple(value.shape))
        if key.startswith(prefixes) and ptr not in seen:
            seen.add(ptr)
            out[key] = value.detach().contiguous().cpu()
    return out


def save_checkpoint(model, directory, state: dict | None = None, **configs) -> Path:
    """Write ``model`` to ``directory`` (weights, config, tokenizer); atomic per file.
    ``state``: a full state dict gathered beforehand (FSDP); default ``model.state_dict()``."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict() if state is None else state
    tensors = _selected(state, saved_prefixes(model.cfg, model.stage))
    tmp = directory / (WEIGHTS + ".tmp")
    save_tensors(tensors, tmp, metadata={"format": "pt", "stage": model.stage})
    tmp.replace(directory / WEIGHTS)
    model.tokenizer.save_pretrained(str(directory / TOKENIZER))
    save_config(directory / CONFIG, model=model.cfg, mask=model.mask_cfg, stage=model.stage,
                **configs)
    return directory


def check_checkpoint_dir(directory) -> Path:
    """``directory`` as a Path if it holds a checkpoint's three parts, else InputError naming
    what is missing (e.g. ``--init`` given a run's ``runs/`` folder or an image folder)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise InputError(f"{directory}: no such checkpoint folder")
    missing = [name for name in (CONFIG, WEIGHTS, TOKENIZER) if not (directory / name).exists()]
    if missing:
        raise InputError(f"{directory}: not a minijarvis checkpoint (no {', '.join(missing)}; "
                         "train.py writes one in its --output-dir)")
    return directory


def checkpoint_configs(directory) -> dict:
    """The configs of a checkpoint folder (``load_config``), with its "model" entry required:
    InputError naming config.json otherwise."""
    configs = load_config(Path(directory) / CONFIG)
    if "model" not in configs:
        raise InputError(f"{Path(directory) / CONFIG}: no \"model\" entry; not a minijarvis checkpoint config")
    return configs


def load_checkpoint(directory, stage: str | None = None, **overrides) -> JarvisModel:
    """Rebuild a model from ``directory``; ``stage="finetune"`` on a stage-1 checkpoint starts
    stage 2: JARVIS's z, proj_tgt and target encoder are dropped (VIRAL builds fresh ones).
    ``overrides`` replace ModelConfig fields (e.g. ``method="viral"`` for stage 2)."""

    directory = check_checkpoint_dir(directory)
    configs = checkpoint_configs(directory)
    saved_stage = configs.get("stage", "align")
    cfg = dataclasses.replace(configs["model"], **overrides)
    try:
        tokenizer = load_tokenizer(str(directory / TOKENIZER))
    except Exception as e:  # noqa: BLE001  a damaged file: tokenizers raises bare Exceptions too
        raise InputError(f"{directory / TOKENIZER}: cannot load the tokenizer ({brief(e)})") from e
    try:
        model = JarvisModel(cfg, configs.get("mask"), stage or saved_stage, tokenizer=tokenizer)
    except ValueError as e:  # settings that each pass their own check but not together
        if overrides:  # a flag of this run (--method viral, ...) may be what does not fit
            raise
        raise InputError(f"{directory / CONFIG}: these settings do not build a model ({brief(e)})") from e
    try:
        state = load_file(str(directory / WEIGHTS))
    except Exception as e:  # safetensors raises its own error type for a damaged file
        raise InputError(f"{directory / WEIGHTS}: cannot read the weights ({brief(e)})") from e
    if model.stage != saved_stage:  # stage 1 -> stage 2: JARVIS's additions are dropped
        state = {k: v for k, v in state.items() if not k.startswith(STAGE1_ONLY)}
    own = model.state_dict()
    unexpected = [k for k in state if k not in own]
    if unexpected:
        raise InputError(f"{directory}: tensors with no place in this model: {unexpected[:5]}")
    missing = set(model.load_state_dict(state, strict=False).missing_keys)
    # Tied weights are stored once; a key is really missing only if its storage wasn't loaded.
    # Parts that a new stage creates (VIRAL's proj_tgt) start fresh.
    expected = set(_selected(own, saved_prefixes(model.cfg, saved_stage)))
    fresh = STAGE1_ONLY if model.stage != saved_stage else ()
    lost = [k for k in missing & expected if not (fresh and k.startswith(fresh))]
    if lost:
        raise InputError(f"{directory}: checkpoint lacks {sorted(lost)[:5]}")
    return model
