"""Configuration: three flat dataclasses (model, masks, training) and the presets.

Every checkpoint directory holds ``config.json`` written by :func:`save_config`, so a
checkpoint explains itself: which LLM and encoders, which method, which masks, which
optimisation. Fields are prefixed by the part they configure (``llm_``, ``ctx_``, ``tgt_``,
``jepa_``, ``mask_``) and map one-to-one to kebab-case flags of ``train.py``.

Defaults reproduce the official JARVIS release; DESIGN.md §2 and the README's fidelity table
list every place where the paper's text differs and the field that selects it.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from .errors import InputError, read_json

METHODS = ("jarvis", "llava", "nomask", "viral", "visper")
STAGES = ("align", "finetune")
DISTANCES = ("cosine", "smooth_l1")
ATTN_IMPLS = ("auto", "sdpa", "eager", "flex_attention")
IMAGE_ASPECTS = ("pad", "resize", "crop")
# The release reads the context features per encoder family (see ModelConfig.context_features).
CONTEXT_LAYERS = {"penultimate": -2, "last": -1}
TRACKERS = ("none", "tensorboard", "wandb")  # --report-to (minijarvis.training.trackers)


@dataclass
class ModelConfig:
    """The MLLM: LLM, context encoder F_ctx, target encoder F_tgt, and the method."""

    # LLM G. Pretrained: loaded from ``llm_name`` (hub id or local directory). Random: built
    # offline from ``llm_arch`` (transformers config kwargs including ``model_type``).
    llm_name: str = "tiny-llama"
    llm_pretrained: bool = False
    llm_arch: dict = field(default_factory=dict)
    llm_attn: str = "auto"  # auto = eager for Gemma2 (soft-capping), sdpa otherwise
    tokenizer: str = "builtin"  # "builtin" = offline BPE (minijarvis.llm); else hub id/dir
    # Context encoder F_ctx (timm name). Weights: pretrained from the hub, a local file, or random.
    ctx_encoder: str = "vit_base_patch16_clip_224"
    ctx_pretrained: bool = False
    ctx_weights: str = ""  # local .safetensors/.bin/.pth file; implies pretrained weights
    ctx_kwargs: dict = field(default_factory=dict)  # extra timm.create_model kwargs
    # Which block F_ctx reads (negative = from the end: -2 penultimate, -1 last) and whether its
    # final norm applies. None = the release's per-family default (context_features()).
    ctx_layer: int | None = None
    ctx_norm: bool | None = None
    # Target encoder F_tgt (JARVIS, nomask, VIRAL only). Sees the image at F_ctx's resolution.
    tgt_encoder: str = "vit_small_patch14_reg4_dinov2"
    tgt_pretrained: bool = False
    tgt_weights: str = ""
    tgt_kwargs: dict = field(default_factory=dict)
    # Method (DESIGN.md §3) and its knobs.
    method: str = "jarvis"
    bidirectional_visual: bool | None = None  # None = release default: on for jarvis only
    jepa_layer: int | None = None  # None = num_layers // 4 (VIRAL: num_layers // 2)
    jepa_lambda: float = 0.2  # probability that a stage-1 step skips JEPA (plain NTP)
    jepa_distance: str = "cosine"  # release: raw -cos; "smooth_l1" = I-JEPA on layer-normed targets
    pos_embed: bool = False  # paper: z + phi(i) (2D sin-cos); release: z alone (RoPE only)
    skip_dropped: bool = True  # masked steps leave out dropped slots (nobody sees them): same losses
    # VisPer-LM (VISPER.md): target specs (targets.parse_target), in the order of their task
    # tokens; the release's experts by default (gen, depth, seg, as the release orders them).
    visper_targets: tuple[str, ...] = ("unclip-vit-h", "depth-anything-v2-l", "oneformer-swin-l")
    visper_weight: float = 0.5  # L = L_NTP + weight * sum_t sum_l L_{t,l}
    visper_contrastive: float = 0.3  # L_{t,l} = smooth-L1 + contrastive * InfoNCE
    visper_temperature: float = 2.0  # initial log logit scale s_t (scale = min(exp(s_t), 100))
    visper_attend_padding: bool = False  # release: predictors attend padding positions too
    # "crop" (CLIP processor: short side to the input size, centre crop), "pad" (LLaVA: square in
    # F_ctx's mean colour) or "resize" (distorts). None = the release's per stage (resolved_image_aspect).
    image_aspect: str | None = None
    max_length: int = 2048  # tokens after splicing the image; truncation never cuts the image

    def resolved_bidirectional_visual(self) -> bool:
        """The release's default: all visual tokens bidirectional for JARVIS, causal otherwise."""
        if self.bidirectional_visual is None:
            return self.method == "jarvis"
        return self.bidirectional_visual

    def resolved_image_aspect(self, stage: str) -> str:
        """The release's default per stage: its stage-1 script sets no aspect option, so the CLIP
        processor crops; stage 2 pads (``--image_aspect_ratio pad``). A set value wins."""
        return self.image_aspect if self.image_aspect is not None else release_image_aspect(stage)

    def context_features(self) -> tuple[int, bool]:
        """(block index, final norm) F_ctx reads. The release's default per family: SigLIP /
        SigLIP2 -> the last block through the final norm (the vision model's last_hidden_state;
        no prefix token); every other encoder (CLIP) -> the penultimate block, no norm (LLaVA)."""
        siglip = "siglip" in self.ctx_encoder.lower()
        layer = self.ctx_layer if self.ctx_layer is not None else (-1 if siglip else -2)
        norm = self.ctx_norm if self.ctx_norm is not None else siglip
        return layer, norm

    def validate(self) -> None:
        _choice("method", self.method, METHODS)
        _choice("jepa_distance", self.jepa_distance, DISTANCES)
        _choice("llm_attn", self.llm_attn, ATTN_IMPLS)
        if self.image_aspect is not None:
            _choice("image_aspect", self.image_aspect, IMAGE_ASPECTS)
        if not 0.0 <= self.jepa_lambda <= 1.0:
            raise ValueError(f"jepa_lambda must lie in [0, 1], got {self.jepa_lambda}")
        if not self.llm_pretrained and not self.llm_arch:
            raise ValueError("a randomly initialised LLM needs llm_arch (a preset gives one); "
                             "pass a hub id or local directory with llm_pretrained=True instead")
        if self.jepa_layer is not None and self.jepa_layer < 1:
            raise ValueError(f"jepa_layer must be >= 1 (hidden_states index), got {self.jepa_layer}")
        if self.method == "visper":
            if self.visper_weight < 0 or not 0.0 <= self.visper_contrastive:
                raise ValueError("visper_weight and visper_contrastive must be >= 0")
        if self.max_length < 8:
            raise ValueError(f"max_length must be >= 8, got {self.max_length}")


def release_image_aspect(stage: str) -> str:
    """How the release fits an image to the encoder's square input in ``stage``: "crop" in stage
    1 (no aspect option: CLIP's processor resizes and centre-crops), "pad" in stage 2."""
    _choice("stage", stage, STAGES)
    return "crop" if stage == "align" else "pad"


@dataclass
class MaskConfig:
    """I-JEPA multi-block masks on the context grid (DESIGN.md §2.2); release defaults."""

    mask_num_targets: int = 4
    mask_target_scale: tuple[float, float] = (0.15, 0.2)
    mask_target_aspect: tuple[float, float] = (0.75, 1.5)
    mask_context_scale: tuple[float, float] = (0.85, 1.0)
    mask_context_aspect: tuple[float, float] = (1.0, 1.0)  # paper's text: (0.75, 1.5)
    mask_min_keep: int | None = None  # None: the release's 10, lowered on a grid too small for it (tiny: 3)
    mask_faithful: bool = True  # False: the clean sampler without the release's quirks

    def sampler_kwargs(self) -> dict:
        return dict(num_targets=self.mask_num_targets, target_scale=tuple(self.mask_target_scale),
                    target_aspect=tuple(self.mask_target_aspect),
                    context_scale=tuple(self.mask_context_scale),
                    context_aspect=tuple(self.mask_context_aspect),
                    min_keep=self.mask_min_keep, faithful=self.mask_faithful)


@dataclass
class TrainConfig:
    """Optimisation and I/O of one stage. LLaVA-1.5 values are filled in by stage_defaults()."""

    stage: str = "align"
    output_dir: str = ""  # default: runs/<preset>-<method>-<stage>
    data: str = ""  # LLaVA JSON; empty = built-in synthetic shapes data
    image_folder: str = ""
    init: str = ""  # stage-1 checkpoint directory to start stage 2 from
    synthetic_size: int = 512  # records of built-in data when --data is empty
    max_steps: int = -1  # -1 = one pass over `epochs` epochs
    epochs: float = 1.0
    batch_size: int = 8  # per device
    grad_accum: int = 1
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_ratio: float = 0.03
    max_grad_norm: float = 1.0
    seed: int = 0
    bf16: bool = False
    gradient_checkpointing: bool = False
    save_every: int = 0  # optimizer steps between checkpoints; 0 = only at the end
    log_every: int = 1
    num_workers: int = 0
    strict: bool = False  # stop on the first bad record instead of skipping and counting it
    plain_style: str = "release"  # stage-1 template: release (no BOS/"\n") or llava (BOS, "\n")
    lambda_per_rank: bool = False  # release: each rank draws the lambda coin on its own
    group_by_modality_length: bool = False  # release stage 2: batches of one modality, similar lengths (sampler.py)
    blank_images: bool = False  # every image replaced by a blank one after loading: the text-only bound
    report_to: str = "none"  # experiment tracker: none, tensorboard or wandb (minijarvis.training.trackers)

    def validate(self) -> None:
        _choice("stage", self.stage, STAGES)
        _choice("plain_style", self.plain_style, ("release", "llava"))
        _choice("report_to", self.report_to, TRACKERS)
        for name in ("batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")


# LLaVA-1.5 hyper-parameters (DESIGN.md §1): global batch and learning rate per stage.
LLAVA_STAGE_DEFAULTS = {"align": dict(global_batch=256, lr=1e-3), "finetune": dict(global_batch=128, lr=2e-5)}

# ---------------------------------------------------------------- presets
# LLM architectures, so that each preset builds its real shape offline with random weights.
_LLM_ARCH = {
    "tiny": dict(model_type="llama", vocab_size=1024, hidden_size=64, intermediate_size=128,
                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                 max_position_embeddings=1024, tie_word_embeddings=False),
    "gemma2-2b": dict(model_type="gemma2", vocab_size=256000, hidden_size=2304,
                      intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
                      num_key_value_heads=4, head_dim=256, max_position_embeddings=8192,
                      sliding_window=4096, query_pre_attn_scalar=256, attn_logit_softcapping=50.0,
                      final_logit_softcapping=30.0, hidden_activation="gelu_pytorch_tanh"),
    "llama3.2-3b": dict(model_type="llama", vocab_size=128256, hidden_size=3072,
                        intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
                        num_key_value_heads=8, head_dim=128, max_position_embeddings=131072,
                        rope_theta=500000.0, tie_word_embeddings=True, rms_norm_eps=1e-5,
                        rope_scaling=dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0,
                                          high_freq_factor=4.0,
                                          original_max_position_embeddings=8192)),
    "vicuna-7b": dict(model_type="llama", vocab_size=32000, hidden_size=4096,
                      intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5),
    "ministral-8b": dict(model_type="mistral", vocab_size=131072, hidden_size=4096,
                         intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                         num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                         rope_theta=100000000.0, sliding_window=32768, rms_norm_eps=1e-5),
    "qwen2-7b": dict(model_type="qwen2", vocab_size=152064, hidden_size=3584,
                     intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                     num_key_value_heads=4, max_position_embeddings=32768, rope_theta=1000000.0,
                     rms_norm_eps=1e-6, tie_word_embeddings=False),
}
_LLM_HUB = {"gemma2-2b": "google/gemma-2-2b-it", "llama3.2-3b": "meta-llama/Llama-3.2-3B-Instruct",
            "vicuna-7b": "lmsys/vicuna-7b-v1.5", "ministral-8b": "mistralai/Ministral-8B-Instruct-2410",
            "qwen2-7b": "Qwen/Qwen2-7B-Instruct"}

# Vision encoders: (timm name, timm kwargs). The paper's: CLIP ViT-L/14@336 (context),
# DINOv2-L/14 (target, run at 336 px -> 24x24), SigLIP2-So400M/14 at 384 px (context, 27x27 =
# 729 tokens: its patch convolution drops 384 - 27*14 = 6 pixels). timm holds that network as
# the 378 px variant (27 * 14, the same 27x27 grid, nothing dropped).
ENCODERS = {
    "clip-l-336": ("vit_large_patch14_clip_quickgelu_336.openai", {}),  # OpenAI CLIP runs QuickGELU
    "siglip2-so400m-384": ("vit_so400m_patch14_siglip_378.v2_webli", {}),
    "dinov2-l": ("vit_large_patch14_dinov2.lvd142m", {}),
    # Tiny encoders for offline runs: 6x6 grids at 96 px, two blocks, width 64 (weights: the
    # toy world's, see preset("tiny"), or random).
    "tiny-clip": ("vit_base_patch16_clip_224", dict(img_size=96, depth=2, embed_dim=64, num_heads=2)),
    "tiny-dinov2": ("vit_small_patch14_reg4_dinov2",
                    dict(img_size=96, patch_size=16, depth=2, embed_dim=64, num_heads=2)),
}

PRESETS = ("tiny",) + tuple(_LLM_HUB)

# The toy world's pretrained tiny parts (minijarvis/toyworld), shipped inside the package and
# found relative to it, so the tiny preset works from any working directory.
TOY_ASSETS = Path(__file__).resolve().parent / "toyworld" / "assets"
TOY_LLM = TOY_ASSETS / "llm"
TOY_CAPTION_ENCODER = TOY_ASSETS / "caption_encoder.safetensors"
TOY_EXPERT = TOY_ASSETS / "expert.safetensors"


def preset(name: str, pretrained: bool | None = None) -> ModelConfig:
    """ModelConfig of a named preset. ``pretrained``: None = weights that need no download:
    the toy world's shipped parts for ``tiny`` (a toy LLM, a caption encoder as F_ctx, a depth
    expert as F_tgt), random weights at the real shape for the others; ``False`` = random
    weights (offline speed/memory runs, tests); ``True`` = hub weights (tiny: the toy parts)."""
    _choice("preset", name, PRESETS)
    if name == "tiny":
        ctx, ctx_kw = ENCODERS["tiny-clip"]
        tgt, tgt_kw = ENCODERS["tiny-dinov2"]
        toy = pretrained is not False
        return ModelConfig(llm_name=str(TOY_LLM) if toy else "tiny-llama", llm_pretrained=toy,
                           llm_arch=dict(_LLM_ARCH["tiny"]), max_length=512,
                           ctx_encoder=ctx, ctx_kwargs=dict(ctx_kw),
                           ctx_weights=str(TOY_CAPTION_ENCODER) if toy else "",
                           tgt_encoder=tgt, tgt_kwargs=dict(tgt_kw),
                           tgt_weights=str(TOY_EXPERT) if toy else "",
                           visper_targets=("tiny-gen", "tiny-depth", "tiny-seg"))
    pretrained = bool(pretrained)
    ctx, _ = ENCODERS["clip-l-336"]
    tgt, _ = ENCODERS["dinov2-l"]
    return ModelConfig(llm_name=_LLM_HUB[name], llm_pretrained=pretrained,
                       llm_arch=dict(_LLM_ARCH[name]),
                       tokenizer=_LLM_HUB[name] if pretrained else "builtin",
                       ctx_encoder=ctx, ctx_pretrained=pretrained, tgt_encoder=tgt,
                       tgt_pretrained=pretrained)


def is_toy(cfg: ModelConfig) -> bool:
    """Whether ``cfg``'s LLM is the toy world's (tiny, so it keeps the tiny training defaults)."""
    return cfg.llm_pretrained and Path(cfg.llm_name).resolve() == TOY_LLM


def default_jepa_layer(num_layers: int, method: str) -> int:
    """Layer j whose output h_j is aligned: num_layers // 4 (JARVIS, nomask); VIRAL uses the
    middle layer. Index into HF ``hidden_states`` (j = output of decoder layer j - 1)."""
    return num_layers // 2 if method == "viral" else max(1, num_layers // 4)


# ---------------------------------------------------------------- (de)serialisation
def save_config(path: str | Path, **entries) -> None:
    """Write {"model": ..., "mask": ..., "train": ..., other plain values} as JSON (atomically)."""
    path = Path(path)
    payload = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
               for k, v in entries.items()}
    if isinstance(payload.get("model"), dict):
        payload["model"] = _toy_paths(payload["model"], str(TOY_ASSETS), TOY_TAG)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(path)


_CLASSES = {"model": ModelConfig, "mask": MaskConfig, "train": TrainConfig}


def load_config(path: str | Path) -> dict:
    """Read a config.json: "model", "mask", "train" as dataclasses, other entries as they are.
    A file that is not such a config, or holds a value its field cannot take (a wrong type, a
    method or stage that does not exist, ...), raises :class:`~minijarvis.errors.InputError`
    naming the file and the value."""
    raw = read_json(path, "config")
    if not isinstance(raw, dict):
        raise InputError(f"{path}: not a minijarvis config (a JSON object with model, mask, train)")
    if "stage" in raw and raw["stage"] not in STAGES:
        raise InputError(f"{path}: stage must be one of {', '.join(STAGES)}; got {raw['stage']!r}")
    out = {}
    for key, values in raw.items():
        if key not in _CLASSES:
            out[key] = values
            continue
        cls = _CLASSES[key]
        if not isinstance(values, dict):
            raise InputError(f"{path}: {key!r} must be a JSON object, got {type(values).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise InputError(f"{path}: unknown {key} config fields {sorted(unknown)}")
        kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        if key == "model":
            kwargs = _toy_paths(kwargs, TOY_TAG, str(TOY_ASSETS))
        try:
            _check_types(cls, kwargs)
            out[key] = cls(**kwargs)
            if hasattr(out[key], "validate"):
                out[key].validate()
        except (TypeError, ValueError) as e:
            raise InputError(f"{path}: {key}: {e}") from None
    return out


def _check_types(cls, values: dict) -> None:
    """TypeError naming the first field whose value has another type than its default's (fields
    whose default is None take anything; an int is a float)."""
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if f.name not in values or default is None or default is dataclasses.MISSING:
            continue
        value, kind = values[f.name], type(default)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) if kind is float else (
            isinstance(value, kind) and (kind is bool or not isinstance(value, bool)))
        if not ok:
            raise TypeError(f"{f.name} must be a {kind.__name__}, got {value!r}")


# A checkpoint names the toy parts relative to the installed package, so it loads wherever the
# repository (or the package) lives.
TOY_TAG = "<minijarvis-toyworld>"


def _toy_paths(values: dict, old: str, new: str) -> dict:
    """``values`` with every string field that starts with ``old`` starting with ``new``."""
    return {k: new + v[len(old):] if isinstance(v, str) and v.startswith(old) else v
            for k, v in values.items()}


def _choice(name: str, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(str, allowed))}; got {value!r}")
