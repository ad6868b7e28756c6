"""``python -m minijarvis.toyworld build``: train the three toy parts and write them to a folder.

Written to OUT (default: the package's ``assets/``, which the tiny preset loads):

    llm/                          HF directory: config.json, model.safetensors, tokenizer files
    caption_encoder.safetensors   the toy CLIP's ViT (timm keys, no head): F_ctx of the tiny preset
    caption_heads.safetensors     its image projection, text tower and temperature (kept for tests)
    expert.safetensors            the toy DINOv2 / depth expert's ViT: F_tgt of the tiny preset
    expert_heads.safetensors      its depth / occupancy / count read-outs (kept for tests)
    build.json                    sizes, seed, seconds, each part's config and measurements

Everything is seeded: the same --size and --seed write the same tensors.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from minijarvis.llm import build_llm
from minijarvis.config import ENCODERS, preset
from minijarvis.encoders import VisionEncoder
from minijarvis.llm import build_tokenizer
from minijarvis.toyworld import parts as P
from minijarvis.toyworld.world import PHRASES, scene_tensors, text_corpus

PARTS = ("all", "encoders")
HELD_OUT = 1 << 30  # index offset of held-out text and scenes (never trained on)
FILES = dict(llm="llm", caption_encoder="caption_encoder.safetensors",
             caption_heads="caption_heads.safetensors", expert="expert.safetensors",
             expert_heads="expert_heads.safetensors", meta="build.json")


@dataclass(frozen=True)
class BuildSize:
    captions: int  # LLM text: captions, conversations, questions per ShapesBench task
    conversations: int
    questions: int
    exercises: int  # text-only multiple-choice exercises (world.mc_exercise)
    scenes: int  # rendered scenes for the two encoders
    held_out: int  # held-out texts of each kind and held-out scenes, for the measurements
    llm_steps: int
    llm_batch: int  # packed rows of 128 tokens
    encoder_steps: int
    batch: int


SIZES = {
    "small": BuildSize(captions=16, conversations=16, questions=2, exercises=4, scenes=16, held_out=8,
                       llm_steps=6, llm_batch=4, encoder_steps=3, batch=8),
    "full": BuildSize(captions=1500, conversations=1500, questions=100, exercises=3000, scenes=10000, held_out=200,
                      llm_steps=600, llm_batch=8, encoder_steps=6000, batch=32),
}


def _save_tensors(module: torch.nn.Module, path: Path) -> None:
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))


def _build_llm(out: Path, size: BuildSize, seed: int, tok) -> dict:
    train = P.encode_texts(tok, text_corpus(tok, size.captions, size.conversations, size.questions, seed,
                                            n_exercises=size.exercises))
    held = P.encode_texts(tok, text_corpus(tok, size.held_out, size.held_out, max(1, size.held_out // 4),
                                           seed, offset=HELD_OUT, n_exercises=size.held_out))
    torch.manual_seed(seed)
    model = build_llm(preset("tiny", pretrained=False))
    random_ppl = P.perplexity(model, held, tok.pad_token_id)
    packed = P.pack(train, P.ROW, tok.eos_token_id, seed)
    losses = P.train_llm(model, packed, size.llm_steps, size.llm_batch, seed)
    model.save_pretrained(str(out / FILES["llm"]))
    tok.save_pretrained(str(out / FILES["llm"]))
    return dict(texts=len(train), tokens=int(packed.numel()), held_out_texts=len(held), final_loss=round(losses[-1], 4),
                held_out_perplexity=round(P.perplexity(model, held, tok.pad_token_id), 3),
                random_twin_perplexity=round(random_ppl, 3))


def _build_caption_encoder(out: Path, size: BuildSize, seed: int, tok, data: dict) -> dict:
    rows, phrase_rows = P.encode_texts(tok, data["captions"]), P.encode_texts(tok, list(PHRASES))
    torch.manual_seed(seed + 1)
    vit = P.new_vit("tiny-clip")
    P.fix_position_codes(vit)
    heads = P.CaptionHeads(len(tok), vit.num_features)
    images = data["images"]

    def loss(v, h, idx):
        return P.caption_loss(h, v, images[idx], [rows[i] for i in idx], phrase_rows,
                              data["share"][idx], data["phrase"][idx])

    losses = P.train_encoder(vit, heads, loss, size.scenes, size.encoder_steps, size.batch, seed + 1,
                             desc="toy CLIP")
    _save_tensors(vit, out / FILES["caption_encoder"])
    _save_tensors(heads, out / FILES["caption_heads"])
    return dict(final_loss=round(losses[-1], 4))


def _build_expert(out: Path, size: BuildSize, seed: int, data: dict) -> dict:
    torch.manual_seed(seed + 2)
    vit = P.new_vit("tiny-dinov2")
    P.fix_position_codes(vit)
    heads = P.ExpertHeads(vit.num_features, phrases=len(PHRASES))
    logd = data["log_depth"][:size.scenes]
    stats = (float(logd.mean()), float(logd.std()))
    images = data["images"]

    def loss(v, h, idx):
        return P.expert_loss(h, P.expert_tokens(v, images[idx]), data, idx, stats)

    losses = P.train_encoder(vit, heads, loss, size.scenes, size.encoder_steps, size.batch, seed + 2,
                             desc="toy expert")
    _save_tensors(vit, out / FILES["expert"])
    _save_tensors(heads, out / FILES["expert_heads"])
    return dict(final_loss=round(losses[-1], 4), log_depth_mean=round(stats[0], 5),
                log_depth_std=round(stats[1], 5))


@torch.no_grad()
def measure_encoders(out: Path, held: dict, tok, seed: int) -> dict:
    """Caption retrieval (toy CLIP vs its random twin) and per-patch depth probes on the
    features the MLLM uses (F_ctx: penultimate block; F_tgt: last layer, normed)."""
    torch.manual_seed(seed + 3)
    twin, twin_heads = P.new_vit("tiny-clip"), P.CaptionHeads(len(tok), 64)
    clip, heads = P.new_vit("tiny-clip"), P.CaptionHeads(len(tok), 64)
    from safetensors.torch import load_file
    clip.load_state_dict(load_file(str(out / FILES["caption_encoder"])))
    heads.load_state_dict(load_file(str(out / FILES["caption_heads"])))
    rows = P.encode_texts(tok, held["captions"])
    images, depth = held["images"], held["log_depth"].flatten(1)
    result = dict(retrieval_top1_of_8=round(P.retrieval_top1(heads.image(clip.eval(), images), heads.text(rows)), 4),
                  retrieval_random_twin=round(P.retrieval_top1(twin_heads.image(twin.eval(), images),
                                                               twin_heads.text(rows)), 4))
    probes, counts = {}, {}
    for label, key, file, features in (("expert", "tiny-dinov2", "expert", "last"),
                                       ("caption_encoder", "tiny-clip", "caption_encoder", "penultimate"),
                                       ("random_expert", "tiny-dinov2", None, "last"),
                                       ("random_caption_encoder", "tiny-clip", None, "penultimate")):
        name, kwargs = ENCODERS[key]
        weights = str(out / FILES[file]) if file else ""
        enc = VisionEncoder(name, weights=weights, layer=-1 if features == "last" else -2,
                            norm=features == "last", **kwargs)
        features = enc(images)
        probes[label] = round(P.depth_probe_r2(features, depth), 4)
        counts[label] = round(P.count_probe_acc(features, held["count"]), 4)
    result["depth_probe_r2"], result["count_probe_accuracy"] = probes, counts
    return result


def encoder_geometry(key: str = "tiny-clip") -> tuple[int, int]:
    """(image side, patch-grid side) of a tiny encoder: the build renders its scenes, and their
    per-patch geometry, at the resolution F_ctx and F_tgt run at."""
    _, kwargs = ENCODERS[key]
    return kwargs["img_size"], kwargs["img_size"] // kwargs.get("patch_size", 16)


def build(out, size: str = "full", seed: int = 0, parts: str = "all") -> dict:
    """Train the LLM, the caption encoder and the expert; write them (and build.json) to ``out``.
    ``parts="encoders"`` keeps the LLM already in ``out`` (and its build.json entries) and
    trains the two encoders only. Returns build.json's content."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {', '.join(SIZES)}; got {size!r}")
    if parts not in PARTS:
        raise ValueError(f"parts must be one of {', '.join(PARTS)}; got {parts!r}")
    out, sz, tok = Path(out), SIZES[size], build_tokenizer()
    out.mkdir(parents=True, exist_ok=True)
    seconds, metrics = {}, {}
    t = time.perf_counter()
    if parts == "all":
        metrics["llm"] = _build_llm(out, sz, seed, tok)
        seconds["llm"] = time.perf_counter() - t
    else:
        old = out / FILES["meta"]
        if not (out / FILES["llm"]).is_dir() or not old.exists():
            raise ValueError(f"--parts encoders keeps the LLM in {out}, but it has no {FILES['llm']}/ "
                             f"or no {FILES['meta']}: build all parts first")
        previous = json.loads(old.read_text())
        metrics["llm"], seconds["llm"] = previous["metrics"]["llm"], previous["seconds"]["llm"]
    t = time.perf_counter()
    data = scene_tensors(sz.scenes + sz.held_out, seed, *encoder_geometry())
    held = {k: v[sz.scenes:] for k, v in data.items()}
    seconds["scenes"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics["caption_encoder"] = _build_caption_encoder(out, sz, seed, tok, data)
    seconds["caption_encoder"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics["expert"] = _build_expert(out, sz, seed, data)
    seconds["expert"] = time.perf_counter() - t
    t = time.perf_counter()
    metrics["measured"] = measure_encoders(out, held, tok, seed)
    seconds["measure"] = time.perf_counter() - t
    meta = dict(size=size, seed=seed, sizes=dataclasses.asdict(sz), metrics=metrics,
                seconds={k: round(v, 1) for k, v in seconds.items()},
                encoders={"caption_encoder": ENCODERS["tiny-clip"], "expert": ENCODERS["tiny-dinov2"]},
                torch=torch.__version__)
    (out / FILES["meta"]).write_text(json.dumps(meta, indent=1))
    return meta
