"""Target encoders: any timm model + a feature rule (VISPER.md §3; JARVIS's F_tgt, DESIGN §2.1).

A target is a frozen timm model and a rule that turns an image into the features a loss regresses:

* ``tokens``: the outputs of some blocks (stages, for hierarchical models), each through the
  final norm, prefix tokens (CLS, registers) dropped, averaged over the blocks, resized
  bilinearly to the context grid -> [B, H*W, D]. JARVIS's F_tgt is ``blocks=(-1,)``;
  Depth-Anything-V2's target is the mean of blocks 4, 11, 17, 23.
* ``pooled``: the model's pooled (and, where it has one, projected) embedding -> [B, 1, D].
  For a timm classifier pass ``num_classes=0`` in ``kwargs`` to get the pre-logits vector.

The encoder takes the image in [0, 1] at the context resolution, normalises it with its own
mean/std and runs at ``kwargs["img_size"]`` when given (the image is resized to it), else at
the context resolution. Weights: random (offline), timm hub (``pretrained``), or a local file
(timm's format; for Depth-Anything-V2 also the authors' checkpoint, see :func:`depth_anything_to_timm`).
"""
from __future__ import annotations

import ast
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import timm
from timm.models._features import feature_take_indices
import torch
import torch.nn.functional as F
from torch import nn

from .config import ENCODERS, ModelConfig
from .encoders import _create_model, check_images, normalize, output_dtype, resize_token_grid

RULES = ("tokens", "pooled")


@dataclass(frozen=True)
class TargetSpec:
    """One target: a timm encoder and the rule that gives its features (module docstring)."""

    name: str  # short task name used in logs and losses: "depth", "seg", "gen", "dino", ...
    encoder: str  # timm model name
    rule: str  # "tokens" | "pooled"
    blocks: tuple[int, ...] = (-1,)  # tokens: 0-based, negative from the end; each normed, averaged
    kwargs: dict = field(default_factory=dict)  # timm.create_model kwargs
    weights: str = ""  # local weights file
    pretrained: bool = False  # timm hub weights (network)
    layers: tuple[int, ...] | None = None  # VisPer LLM layers (hidden_states index); None = preset


# The release's experts (VISPER.md §3), the tiny targets, and every encoder of config.ENCODERS
# as a tokens target at its last block (JARVIS's F_tgt).
TARGET_PRESETS: dict[str, TargetSpec] = {
    "depth-anything-v2-l": TargetSpec("depth", "vit_large_patch14_dinov2.lvd142m", "tokens",
                                      blocks=(4, 11, 17, 23), kwargs=dict(img_size=336)),
    "oneformer-swin-l": TargetSpec("seg", "swin_large_patch4_window12_384", "tokens",
                                   kwargs=dict(img_size=384)),  # last stage: stride 32, 1536 ch
    "unclip-vit-h": TargetSpec("gen", "vit_huge_patch14_clip_224.laion2b", "pooled",
                               kwargs=dict(img_size=224, num_classes=1024)),  # projected, 1024
    # Tiny random targets for offline runs (tiny context: 192 px, 12x12 grid).
    "tiny-depth": TargetSpec("depth", "vit_small_patch14_reg4_dinov2", "tokens", blocks=(0, 1),
                             kwargs=dict(img_size=192, patch_size=16, depth=2, embed_dim=48,
                                         num_heads=2)),
    "tiny-seg": TargetSpec("seg", "swin_tiny_patch4_window7_224", "tokens",
                           kwargs=dict(img_size=192, patch_size=16, window_size=6, depths=(1, 1),
                                       num_heads=(1, 2), embed_dim=16)),  # 6x6 stage, stride 32
    "tiny-gen": TargetSpec("gen", "vit_base_patch16_clip_224", "pooled",
                           kwargs=dict(img_size=96, depth=1, embed_dim=32, num_heads=2,
                                       num_classes=24)),
}
_ENCODER_TASK = {"clip-l-336": "clip", "siglip2-so400m-384": "siglip", "dinov2-l": "dino",
                 "tiny-clip": "clip", "tiny-dinov2": "dino"}
for _key, (_name, _kwargs) in ENCODERS.items():
    TARGET_PRESETS[_key] = TargetSpec(_ENCODER_TASK.get(_key, _key), _name, "tokens", kwargs=dict(_kwargs))

_FIELDS = {f.name for f in dataclasses.fields(TargetSpec)}


def parse_target(text: str) -> TargetSpec:
    """A preset name, or comma-separated ``key=value`` parts, optionally after a preset name.

    ``depth-anything-v2-l,weights=/ckpt/da2.pth`` or
    ``name=depth,encoder=vit_small_patch14_dinov2,rule=tokens,blocks=4+11,layers=8+20``.
    Lists use ``+``; ``timm.<arg>=<value>`` sets a timm.create_model kwarg. Raises ValueError
    naming the bad part."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if not parts:
        raise ValueError("empty target spec")
    values: dict = {}
    if "=" not in parts[0]:
        if parts[0] not in TARGET_PRESETS:
            raise ValueError(f"unknown target preset {parts[0]!r}; presets: {', '.join(TARGET_PRESETS)}")
        values = dataclasses.asdict(TARGET_PRESETS[parts.pop(0)])
        values["kwargs"] = dict(values["kwargs"])
    for part in parts:
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or not raw.strip():
            raise ValueError(f"target spec part {part!r} is not key=value")
        if key.startswith("timm."):
            values.setdefault("kwargs", {})[key[5:]] = _literal(raw.strip())
        elif key in ("blocks", "layers"):
            try:
                values[key] = tuple(int(v) for v in raw.split("+"))
            except ValueError:
                raise ValueError(f"target spec part {part!r}: {key} must be integers joined by '+'") from None
        elif key == "pretrained":
            if raw.strip().lower() not in ("true", "false", "1", "0"):
                raise ValueError(f"target spec part {part!r}: pretrained must be true or false")
            values[key] = raw.strip().lower() in ("true", "1")
        elif key in _FIELDS - {"kwargs"}:
            values[key] = raw.strip()
        else:
            raise ValueError(f"target spec part {part!r}: unknown key {key!r} (keys: name, encoder, "
                             "rule, blocks, layers, weights, pretrained, timm.<kwarg>)")
    missing = [k for k in ("name", "encoder", "rule") if not values.get(k)]
    if missing:
        raise ValueError(f"target spec {text!r} lacks {', '.join(missing)} (or start it with a preset name)")
    spec = TargetSpec(**values)
    validate_spec(spec)
    return spec


def validate_spec(spec: TargetSpec) -> None:
    if spec.rule not in RULES:
        raise ValueError(f"target {spec.name}: rule must be one of {', '.join(RULES)}; got {spec.rule!r}")
    if not spec.blocks:
        raise ValueError(f"target {spec.name}: blocks must name at least one block")
    if spec.layers is not None and (not spec.layers or min(spec.layers) < 1):
        raise ValueError(f"target {spec.name}: layers must be >= 1 (hidden_states index), got {spec.layers}")
    if not spec.name.replace("-", "").replace("_", "").isalnum():
        raise ValueError(f"target name {spec.name!r}: use letters, digits, '-' or '_' (it names log keys)")


def _literal(raw: str):
    try:
        return ast.literal_eval(raw.replace("+", ","))  # 1+1 -> (1, 1): tuples without commas
    except (ValueError, SyntaxError):
        return raw


class TargetEncoder(nn.Module):
    """A frozen target: images [B,3,S,S] in [0,1] -> features [B, num_tokens, dim], detached.

    ``tokens`` rule -> [B, H*W, D] on ``grid``; ``pooled`` rule -> [B, 1, D]. Attributes:
    ``spec``, ``dim``, ``num_tokens``, ``image_size`` (S, the input side), ``run_size`` (the
    side the model runs at), ``grid``, ``native_grid`` (tokens: the model's own grid),
    ``mean``/``std``, ``num_prefix_tokens``, ``name`` (timm name), ``model``.
    """

    def __init__(self, spec: TargetSpec, image_size: int, grid: tuple[int, int]):
        super().__init__()
        validate_spec(spec)
        kwargs = dict(spec.kwargs)
        self.run_size = _side(kwargs.pop("img_size", image_size))
        self.model = _load_model(spec, dict(kwargs, img_size=self.run_size))
        self.model.requires_grad_(False)
        self.model.eval()
        data_cfg = timm.data.resolve_model_data_config(self.model)
        self.spec, self.name, self.image_size = spec, spec.encoder, int(image_size)
        self.mean = tuple(float(v) for v in data_cfg["mean"])
        self.std = tuple(float(v) for v in data_cfg["std"])
        self.num_prefix_tokens = int(getattr(self.model, "num_prefix_tokens", 0))
        if spec.rule == "pooled":
            self.dim, self.grid, self.native_grid = _pooled_dim(self.model), (1, 1), (1, 1)
        else:
            self.dim, self.native_grid = self._probe_tokens()
            self.grid = tuple(int(v) for v in grid)
        self.num_tokens = self.grid[0] * self.grid[1]

    def _probe_tokens(self) -> tuple[int, tuple[int, int]]:
        """Feature width and native grid of the chosen blocks, from timm's feature_info."""
        info = self.model.feature_info
        taken, _ = feature_take_indices(len(info), list(self.spec.blocks))
        widths = [int(info[i]["num_chs"]) for i in taken]
        if len(set(widths)) != 1:
            raise ValueError(f"target {self.spec.name}: blocks {self.spec.blocks} have different "
                             f"widths {widths} and cannot be averaged")
        if hasattr(self.model, "blocks") and hasattr(self.model, "patch_embed"):  # flat ViT
            return widths[0], tuple(int(v) for v in self.model.patch_embed.grid_size)
        side = -(-self.run_size // int(info[taken[0]]["reduction"]))  # hierarchical: stage stride
        return widths[0], (side, side)

    def _blocks(self, x: torch.Tensor, model: nn.Module) -> list[torch.Tensor]:
        # norm=True: every block through the final norm (timm Swin norms only its last stage,
        # the one the seg target reads); prefix tokens are dropped; NCHW for every family.
        return model.forward_intermediates(x, indices=list(self.spec.blocks), norm=True,
                                           output_fmt="NCHW", intermediates_only=True,
                                           stop_early=True)

    def train(self, mode: bool = True) -> "TargetEncoder":
        """Stay in eval whatever the parent asks: a frozen encoder never enables dropout."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.image_size, self.name)
        out_dtype = output_dtype(images)
        x = normalize(images, self.mean, self.std)
        if self.run_size != self.image_size:
            x = F.interpolate(x, size=(self.run_size, self.run_size), mode="bilinear",
                              align_corners=False, antialias=True)
        x = x.to(next(self.model.parameters()).dtype)
        if self.spec.rule == "pooled":
            return self.model(x)[:, None].to(out_dtype)  # pool -> norm -> head (projection)
        feats = self._blocks(x, self.model)
        mean = torch.stack([f.float() for f in feats]).mean(0) if len(feats) > 1 else feats[0]
        native = tuple(mean.shape[2:])
        tokens = mean.flatten(2).transpose(1, 2)  # [B, h*w, D] raster order
        if native != self.grid:
            tokens = resize_token_grid(tokens, native, self.grid)
        return tokens.to(out_dtype)


def build_target(spec: TargetSpec | str, image_size: int, grid: tuple[int, int]) -> TargetEncoder:
    """A target encoder from a spec or its text (:func:`parse_target`)."""
    return TargetEncoder(parse_target(spec) if isinstance(spec, str) else spec, image_size, grid)


# The release's layers for its 32-layer LLMs (VISPER.md §4), per task name; other names: depth's.
RELEASE_LAYERS = {"depth": (8, 20), "seg": (10, 18), "gen": (12, 20)}
RELEASE_DEPTH = 32


def build_target_encoder(cfg: ModelConfig, image_size: int, grid: tuple[int, int]):
    """JARVIS's F_tgt from ``cfg.tgt_*``: a :class:`TargetEncoder` with the tokens rule at the
    last block (final-normed, prefix tokens dropped), run at ``image_size`` (F_ctx's resolution)
    and resized bilinearly to ``grid`` if needed. VisPer-LM's targets share this implementation."""
    kwargs = dict(cfg.tgt_kwargs)
    given = kwargs.pop("img_size", image_size)
    if given not in (image_size, (image_size, image_size), [image_size, image_size]):
        raise ValueError(f"tgt_kwargs img_size={given} conflicts with the context resolution "
                         f"{image_size}: the target encoder always runs at the context resolution; "
                         "drop img_size from tgt_kwargs")
    spec = TargetSpec(name="tgt", encoder=cfg.tgt_encoder, rule="tokens", blocks=(-1,),
                      kwargs=kwargs, weights=cfg.tgt_weights, pretrained=cfg.tgt_pretrained)
    return TargetEncoder(spec, image_size, grid)


def resolve_layers(spec: TargetSpec, num_layers: int) -> tuple[int, ...]:
    """The LLM layers (1-based ``hidden_states`` index) whose outputs predict this target.

    ``spec.layers`` if given (each must lie in [1, num_layers]); else the release's layers for
    the task (:data:`RELEASE_LAYERS`) scaled by num_layers / 32, rounded half up, clamped to
    [1, num_layers], duplicates removed, sorted. E.g. 26 layers: depth (7, 16)."""
    if spec.layers is not None:
        bad = [layer for layer in spec.layers if not 1 <= layer <= num_layers]
        if bad:
            raise ValueError(f"target {spec.name}: layers {bad} outside [1, {num_layers}] "
                             f"(the LLM has {num_layers} layers)")
        return tuple(sorted(set(spec.layers)))
    release = RELEASE_LAYERS.get(spec.name, RELEASE_LAYERS["depth"])
    scaled = (int(layer * num_layers / RELEASE_DEPTH + 0.5) for layer in release)
    return tuple(sorted({min(max(layer, 1), num_layers) for layer in scaled}))


def _side(size) -> int:
    if isinstance(size, (tuple, list)):
        if len(size) != 2 or size[0] != size[1]:
            raise ValueError(f"only square target inputs are supported, got img_size={size}")
        size = size[0]
    return int(size)


def _pooled_dim(model: nn.Module) -> int:
    classes = int(getattr(model, "num_classes", 0) or 0)
    return classes if classes > 0 else int(model.num_features)


def depth_anything_to_timm(state_dict: dict) -> dict:
    """The authors' Depth-Anything-V2 checkpoint -> timm DINOv2 ViT keys.

    Their model holds the DINOv2 encoder under ``pretrained.`` (same block names as timm:
    ``blocks.i.attn.qkv``, ``ls1.gamma`` ...) and the DPT decoder under ``depth_head.``: keep
    the encoder, strip the prefix, drop ``mask_token`` (unused at inference) and the decoder.
    The position embedding keeps its 37x37 size; timm's filter resamples it at load time."""
    out = {k[len("pretrained."):]: v for k, v in state_dict.items() if k.startswith("pretrained.")}
    out.pop("mask_token", None)
    if not out:
        raise ValueError("no 'pretrained.' keys: not a Depth-Anything-V2 checkpoint")
    return out


def _is_depth_anything(path: Path) -> bool:
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        with safe_open(str(path), "pt") as f:
            return any(k.startswith("pretrained.") for k in f.keys())
    state = torch.load(path, map_location="cpu", mmap=True, weights_only=True)  # lazy: keys only
    return isinstance(state, dict) and any(str(k).startswith("pretrained.") for k in state)


def _load_model(spec: TargetSpec, kwargs: dict) -> nn.Module:
    """The timm model with its weights; the authors' Depth-Anything-V2 format is mapped first."""
    path = Path(spec.weights).expanduser() if spec.weights else None
    if path is None or not path.is_file() or not _is_depth_anything(path):
        try:
            return _create_model(spec.encoder, spec.pretrained, spec.weights, kwargs)
        except TypeError as err:  # a convnet takes any size and has no img_size argument
            if "img_size" not in str(err):
                raise
            return _create_model(spec.encoder, spec.pretrained, spec.weights,
                                 {k: v for k, v in kwargs.items() if k != "img_size"})
    from timm.models.vision_transformer import checkpoint_filter_fn
    model = timm.create_model(spec.encoder, pretrained=False, **dict(dict(num_classes=0), **kwargs))
    state = depth_anything_to_timm(timm.models.load_state_dict(str(path), weights_only=True))
    missing, unexpected = model.load_state_dict(checkpoint_filter_fn(state, model), strict=False)
    if missing or unexpected:
        raise ValueError(f"{path} does not fit timm model {spec.encoder}: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    return model
