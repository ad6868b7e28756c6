"""probe.py's work around the probing core (``core.py``): checking every input before any work,
the probe images, the prompt, the target encoders, and one checkpoint's scores.

Images: by default synthetic scenes (``shapes.py``) from a seed range of their own, disjoint
from the training data (caption / instruct splits) and from ShapesBench's items; or the images
of a LLaVA JSON, or every image in a folder. A seeded shuffle splits them into probe-train and
probe-test images. Every image is prompted as the checkpoint saw images in training: stage 1
the plain template (``<image>`` alone, with BOS in the "llava" plain style), stage 2 a chat
prompt holding the image.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from minijarvis.probes import core as P
from minijarvis.training.checkpoint import CONFIG, WEIGHTS
from minijarvis.config import load_config
from minijarvis.data.llava import encode_caption, encode_prompt, read_llava_json
from minijarvis.data.images import load_image
from minijarvis.errors import InputError, UsageError
from minijarvis.training.runtime import set_cpu_threads
from minijarvis.data.shapes import DEFAULT_IMAGE_SIZE, render, scene_from_seed, scene_seed
from minijarvis.targets import TargetSpec, build_target, parse_target, resolve_layers
from minijarvis.training.checkpoint import load_checkpoint

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PROBE_SEEDS = 1 << 39  # scene indices >= this in the "bench" split: ShapesBench items stay below 2**34
PROBE_QUESTION = "Describe the image."


# ---------------------------------------------------------------- inputs, checked before any work
@dataclass
class CheckpointInfo:
    path: str
    label: str
    method: str
    stage: str
    plain_style: str
    num_layers: int


def checkpoint_info(directory: str, label: str) -> CheckpointInfo:
    """Read a checkpoint's config.json (no weights): InputError if the folder is not a checkpoint."""
    d = Path(directory)
    if not (d / CONFIG).is_file() or not (d / WEIGHTS).is_file():
        raise InputError(f"{d}: not a minijarvis checkpoint (needs {CONFIG} and {WEIGHTS}; "
                         "give a folder train.py wrote)")
    try:
        configs = load_config(d / CONFIG)
        cfg = configs["model"]
    except (ValueError, KeyError, TypeError) as e:
        raise InputError(f"{d / CONFIG}: not a minijarvis config ({e})") from None
    train = configs.get("train")
    return CheckpointInfo(str(d), label, cfg.method, configs.get("stage", "align"),
                          getattr(train, "plain_style", "release"), _num_layers(cfg))


def _num_layers(cfg) -> int:
    if cfg.llm_pretrained:  # a local directory or hub id: its config.json only
        from transformers import AutoConfig
        try:
            return AutoConfig.from_pretrained(cfg.llm_name).get_text_config().num_hidden_layers
        except (OSError, ValueError) as e:
            raise InputError(f"cannot read the config of the checkpoint's LLM {cfg.llm_name!r}: "
                             f"{str(e).splitlines()[0]}") from None
    return int(cfg.llm_arch.get("num_hidden_layers", cfg.llm_arch.get("text_config", {}).get("num_hidden_layers")))


def parse_layers(text: str, infos: list[CheckpointInfo]) -> dict[str, list[int]]:
    """``all`` or a comma list (0 = input embeddings ... L) -> layers per checkpoint path;
    UsageError naming the layer and the checkpoint if one is out of range."""
    if text.strip() == "all":
        return {i.path: list(range(i.num_layers + 1)) for i in infos}
    try:
        layers = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise UsageError(f"--layers must be 'all' or a comma list of integers like 0,2,4; got {text!r}") from None
    if not layers:
        raise UsageError("--layers names no layer")
    for info in infos:
        bad = [l for l in layers if not 0 <= l <= info.num_layers]
        if bad:
            raise UsageError(f"--layers {bad[0]} is out of range for {info.path}: its LLM has "
                             f"{info.num_layers} layers, so layers 0..{info.num_layers} (0 = input embeddings)")
    return {i.path: layers for i in infos}


def parse_targets(texts: list[str]) -> list[tuple[str, TargetSpec]]:
    """(label, spec) per ``--target`` text (``targets.parse_target``: a preset or key=value parts)."""
    out = []
    for text in texts:
        try:
            out.append((text, parse_target(text)))
        except ValueError as e:
            raise UsageError(f"--target: {e}") from None
    return out


def stored_target(spec: TargetSpec, infos: list[CheckpointInfo]) -> tuple[dict | None, str]:
    """A random-weight target (offline runs) is the network some checkpoint trained toward: the
    F_tgt a JARVIS / nomask checkpoint stores, if its timm model is the spec's. Returns (its
    state dict, that checkpoint's path), or (None, "") for pretrained targets and when no
    checkpoint holds one; the caller then draws the weights from --seed, the same for all."""
    if spec.pretrained or spec.weights:
        return None, ""
    from safetensors import safe_open
    for info in infos:
        cfg = load_config(Path(info.path) / CONFIG)["model"]
        if cfg.tgt_encoder != spec.encoder or cfg.tgt_pretrained or cfg.tgt_weights:
            continue
        with safe_open(str(Path(info.path) / WEIGHTS), framework="pt") as f:
            state = {k[len("target_encoder."):]: f.get_tensor(k) for k in f.keys() if k.startswith("target_encoder.")}
        if state:
            return state, info.path
    return None, ""


def load_target(spec: TargetSpec, state: dict | None, source: str, image_size: int, grid, seed: int):
    """The target encoder for one checkpoint, and where its weights came from (a line for the JSON)."""
    with torch.random.fork_rng(devices=[]):  # random timm weights: the same on every run
        torch.manual_seed(seed)
        encoder = build_target(spec, image_size, grid)
    if spec.pretrained or spec.weights:
        return encoder, spec.weights or "pretrained (timm hub)"
    if state is not None:
        try:
            encoder.load_state_dict(state)
            return encoder, f"random, as stored in {source}"
        except RuntimeError:  # another resolution or shape: fall back to the seeded weights
            pass
    return encoder, f"random, seed {seed}"


# ---------------------------------------------------------------- images and prompts
def probe_images(source: str, image_folder: str, limit: int, seed: int) -> list[tuple[str, object]]:
    """(id, PIL image or path) of at most ``limit`` images: generated scenes (``source`` empty),
    a LLaVA JSON's images (paths relative to ``image_folder``, default the JSON's folder), or
    every image file in the folder ``source``; then shuffled with ``seed``."""
    if not source:
        items = [(f"scene-{i}", render(scene_from_seed(scene_seed("bench", PROBE_SEEDS | i, seed)), DEFAULT_IMAGE_SIZE))
                 for i in range(limit)]
    else:
        path = Path(source)
        if path.is_dir():
            items = [(p.name, p) for p in sorted(path.rglob("*")) if p.suffix.lower() in IMAGE_SUFFIXES]
        elif path.is_file():
            try:
                records = read_llava_json(path)
            except ValueError as e:
                raise InputError(str(e)) from None
            folder = Path(image_folder) if image_folder else path.parent
            items = [(str(r["id"]), folder / r["image"]) for r in records if isinstance(r.get("image"), str)]
        else:
            raise InputError(f"{path}: no such image folder or LLaVA JSON file")
        if not items:
            raise InputError(f"{path}: holds no images")
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
        items = [items[k] for k in order[:limit]]
    return items


def split_sizes(n: int, test_fraction: float) -> tuple[int, int]:
    """(probe-train, probe-test) image counts; UsageError if either would be too small."""
    n_test = round(n * test_fraction)
    if n_test < 2 or n - n_test < 2:
        raise UsageError(f"{n} images with --test-fraction {test_fraction} leave {n - n_test} to train "
                         f"and {n_test} to test the probes; need at least 2 each (raise --limit)")
    return n - n_test, n_test


def prompt_ids(model, stage: str, plain_style: str) -> list[int]:
    """Token ids up to and including the image as the checkpoint was trained: stage 1 the plain
    template (``data.llava.encode_caption`` cut after ``<image>``), stage 2 a one-turn chat prompt."""
    if stage == "align":
        ids, _ = encode_caption(model.tokenizer, "x", plain_style)
        return ids[:ids.index(model.image_token_id) + 1]
    return encode_prompt(model.tokenizer, PROBE_QUESTION, has_image=True)


def method_layers(model) -> list[int]:
    """The layers the checkpoint's method trained on: JARVIS / nomask / VIRAL's layer j, or the
    union of VisPer-LM's layers over its targets (``targets.resolve_layers``); none for LLaVA."""
    cfg = model.cfg
    if cfg.method in ("jarvis", "nomask", "viral"):
        return [int(model.jepa_layer)]
    num_layers = model.llm.config.get_text_config().num_hidden_layers
    specs = [parse_target(t) for t in getattr(cfg, "visper_targets", ())] if cfg.method == "visper" else []
    return sorted({layer for spec in specs for layer in resolve_layers(spec, num_layers)})


# ---------------------------------------------------------------- one checkpoint
def probe_checkpoint(info: CheckpointInfo, layers: list[int], targets: list, items, n_train: int, args) -> dict:
    """Every score of one checkpoint: rows (target, layer, metric, mean, lo, hi) and per-image
    scores, the mean-predictor baseline per target, the method's layers and timings."""
    t0 = time.time()
    device = torch.device(args.device)
    model = load_checkpoint(info.path).to(device).eval().requires_grad_(False)
    set_cpu_threads(model, device)
    images = torch.stack([load_image(src, model.image_size, model.image_mean, model.image_aspect,
                                     record_id=rid) for rid, src in items])
    ids = prompt_ids(model, info.stage, info.plain_style)
    est = P.cache_bytes(len(items), len(layers), len(ids) - 1 + model.num_visual, model.llm.config.get_text_config().hidden_size)
    print(f"{info.label}: {info.method}, stage {info.stage}, {len(layers)} layers, {len(items)} images; "
          f"hidden-state cache {P.human_bytes(est)}")
    hidden, visual = P.collect_hidden_states(model, images, ids, layers, args.batch_size, device, args.bf16,
                                             desc=f"{info.label} forward")
    t_forward = time.time() - t0
    rows, baselines = [], {}
    sources = {}
    for name, spec, state, stored_in in targets:
        encoder, sources[name] = load_target(spec, state, stored_in, model.image_size, model.grid, args.seed)
        encoder.to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            y = torch.cat([encoder(images[s:s + args.batch_size].to(device)).float().cpu()
                           for s in range(0, len(images), args.batch_size)])
        del encoder
        probes = P.make_probes(args.probe, len(layers), hidden.shape[-1], y.shape[-1], y.shape[1],
                               args.seed, args.probe_width)
        P.train_probes(probes, args.probe, hidden[:n_train], y[:n_train], visual, args.steps, args.batch_size,
                       args.seed, args.lr, device, desc=f"{info.label} {name} probes")
        scores = P.score_probes(probes, args.probe, hidden[n_train:], y[n_train:], visual, args.batch_size, device,
                                mean=y[:n_train].mean(0, keepdim=True))
        base = P.baseline_scores(y[:n_train], y[n_train:])
        for metric in P.METRICS:
            mean, lo, hi = P.bootstrap(scores[metric], args.bootstrap, args.seed)
            rows += [dict(target=name, layer=l, metric=metric, mean=float(mean[k]), lo=float(lo[k]),
                          hi=float(hi[k])) for k, l in enumerate(layers)]
            bm, blo, bhi = P.bootstrap(base[metric][None], args.bootstrap, args.seed)
            baselines.setdefault(name, {})[metric] = dict(mean=float(bm[0]), lo=float(blo[0]), hi=float(bhi[0]))
    result = dict(label=info.label, path=info.path, method=info.method, stage=info.stage,
                  num_layers=info.num_layers, method_layers=method_layers(model), layers=layers,
                  rows=rows, baseline=baselines, target_weights=sources, seconds=dict(forward=round(t_forward, 2),
                                                              total=round(time.time() - t0, 2)))
    del model, hidden
    return result
