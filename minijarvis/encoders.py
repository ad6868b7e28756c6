"""Frozen timm vision encoders: context encoder F_ctx and target encoder F_tgt.

F_ctx (DESIGN.md §1): the block and norm the release reads for its family
(``ModelConfig.context_features``): CLIP -> the penultimate block, no final norm, CLS dropped
(LLaVA); SigLIP / SigLIP2 -> the last block through the final norm (``last_hidden_state``; no
prefix token). F_tgt (§2.1): last layer with its final norm, prefix tokens dropped, run at
F_ctx's resolution and resized bilinearly to F_ctx's grid if the grids differ. Both take the
same image in [0,1] and normalise it with their own mean/std; both are frozen (no grad, eval).
Weights: random (offline default), timm hub (``pretrained=True``), or a local file
(``weights=path``, loaded through timm: key conversion and pos-embed resampling apply).
"""
from __future__ import annotations

import logging
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

from .config import ModelConfig

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


class VisionEncoder(nn.Module):
    """A frozen timm ViT-style encoder that returns patch tokens [B, H*W, D] in raster order.

    ``layer``: the block whose output is returned (negative = from the end: -2 = penultimate,
    LLaVA's F_ctx; -1 = last); ``norm``: pass it through the final norm first (F_tgt, SigLIP's
    F_ctx). Never the head or pooling. Extra ``timm_kwargs`` go to ``timm.create_model`` (e.g.
    depth). (Targets resized to another grid are ``targets.TargetEncoder``.)

    Attributes: ``image_size`` (square input side), ``grid`` (H, W) of the returned tokens,
    ``mean``/``std`` (timm data config), ``dim`` (D), ``num_prefix_tokens``, ``name``,
    ``layer`` (as given), ``final_norm``.
    """

    def __init__(self, name: str, pretrained: bool = False, weights: str = "",
                 img_size: int | None = None, *, layer: int = -2, norm: bool = False,
                 **timm_kwargs):
        super().__init__()
        if img_size is not None:
            timm_kwargs["img_size"] = img_size
        self.model = _create_model(name, pretrained, weights, timm_kwargs)
        if not (hasattr(self.model, "patch_embed") and hasattr(self.model, "forward_intermediates")):
            raise ValueError(f"{name}: only ViT-style timm encoders (patch_embed + "
                             "forward_intermediates) are supported")
        depth = len(self.model.blocks)
        if not -depth <= layer < depth:
            raise ValueError(f"{name}: layer {layer} is not a block index of this {depth}-block "
                             f"encoder (allowed {-depth}..{depth - 1}; -2 = penultimate, -1 = last)")
        self.model.requires_grad_(False)
        self.model.eval()
        height, width = self.model.patch_embed.img_size  # an img_size override shows here only
        if height != width:
            raise ValueError(f"{name}: only square inputs are supported, got {height}x{width}")
        data_cfg = timm.data.resolve_model_data_config(self.model)
        self.name, self.layer, self.final_norm, self.image_size = name, layer, norm, int(height)
        self.mean = tuple(float(v) for v in data_cfg["mean"])
        self.std = tuple(float(v) for v in data_cfg["std"])
        self.dim = int(self.model.num_features)
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        self.grid = tuple(int(v) for v in self.model.patch_embed.grid_size)

    def train(self, mode: bool = True) -> "VisionEncoder":
        """Stay in eval whatever the parent asks: a frozen encoder never enables dropout."""
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images float [B,3,S,S] in [0,1], S = image_size -> features [B, H*W, D], detached.

        Runs in the encoder's parameter dtype (autocast applies if active); returns the
        autocast dtype under autocast, else the dtype of ``images``.
        """
        check_images(images, self.image_size, self.name)
        out_dtype = output_dtype(images)
        x = normalize(images, self.mean, self.std).to(next(self.model.parameters()).dtype)
        # timm drops the prefix tokens here (return_prefix_tokens=False); stop_early skips the
        # blocks after ``layer``, whose outputs are never used; norm=True applies the final norm.
        (tokens,) = self.model.forward_intermediates(
            x, indices=[self.layer], norm=self.final_norm, output_fmt="NLC",
            intermediates_only=True, stop_early=True)
        return tokens.to(out_dtype)


def check_images(images: torch.Tensor, size: int, name: str) -> None:
    """Raise a clear error unless ``images`` is [B, 3, size, size]."""
    if images.ndim != 4 or tuple(images.shape[1:]) != (3, size, size):
        raise ValueError(f"{name} expects images [B,3,{size},{size}], got {tuple(images.shape)}")


def normalize(images: torch.Tensor, mean, std) -> torch.Tensor:
    """(images - mean) / std per channel, in float32: each encoder applies its own statistics."""
    mean = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return (images.float() - mean) / std


def output_dtype(images: torch.Tensor) -> torch.dtype:
    """The dtype an encoder returns: autocast's if active, else the dtype of ``images``."""
    kind = images.device.type
    autocast = torch.amp.is_autocast_available(kind) and torch.is_autocast_enabled(kind)
    return torch.get_autocast_dtype(kind) if autocast else images.dtype


def resize_token_grid(tokens: torch.Tensor, src: tuple[int, int], dst: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize (align_corners=False) of raster tokens [B, h*w, D] on grid ``src`` = (h, w)
    to [B, H*W, D] on grid ``dst`` = (H, W). Computed in float32; returns float32."""
    batch, count, dim = tokens.shape
    if count != src[0] * src[1]:
        raise ValueError(f"{count} tokens do not form a {src[0]}x{src[1]} grid")
    grid = tokens.float().reshape(batch, src[0], src[1], dim).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(dst), mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


def build_context_encoder(cfg: ModelConfig) -> VisionEncoder:
    """F_ctx from ``cfg.ctx_*``: the block and norm of ``cfg.context_features()`` (CLIP: the
    penultimate block, no norm; SigLIP: the last block, final-normed), prefix tokens dropped."""
    layer, norm = cfg.context_features()
    return VisionEncoder(cfg.ctx_encoder, cfg.ctx_pretrained, cfg.ctx_weights, layer=layer,
                         norm=norm, **cfg.ctx_kwargs)


class _MissingKeys(logging.Handler):
    """Collects timm's "Missing keys" log line. With num_classes=0 timm loads non-strictly and
    reports missing keys only at INFO, so a file for another architecture would silently leave
    random weights; we turn that into an error."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().startswith("Missing keys"):
            self.messages.append(record.getMessage())


def _create_model(name: str, pretrained: bool, weights: str, kwargs: dict) -> nn.Module:
    kwargs = dict(dict(num_classes=0), **kwargs)  # patch tokens only (a pooled target keeps its head)
    if not weights:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"encoder weights file not found: {path} (give a local "
                                f"{'/'.join(WEIGHT_SUFFIXES)} file, or leave weights empty and set "
                                "pretrained=True to download timm hub weights)")
    logger, watch = logging.getLogger("timm.models._builder"), _MissingKeys()
    level = logger.level
    logger.addHandler(watch)
    logger.setLevel(logging.INFO)
    try:
        model = timm.create_model(name, pretrained=True,
                                  pretrained_cfg_overlay=dict(file=str(path)), **kwargs)
    finally:
        logger.removeHandler(watch)
        logger.setLevel(level)
    if watch.messages:
        raise ValueError(f"{path} does not fit timm model {name}: {watch.messages[0][:300]}")
    return model
