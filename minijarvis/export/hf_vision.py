"""A timm ViT (minijarvis's context encoder) as the transformers vision model LLaVA runs.

transformers' LLaVA takes its vision tower from transformers, not timm: CLIP ViTs become
``CLIPVisionModel``, SigLIP ViTs ``SiglipVisionModel``. The two implementations compute the
same network; only the parameter names and the fused ``qkv`` projection differ:

    timm (CLIP settings)            transformers CLIPVisionModel
    cls_token [1,1,D]               embeddings.class_embedding [D]
    pos_embed [1,1+N,D]             embeddings.position_embedding.weight [1+N,D]
    patch_embed.proj (no bias)      embeddings.patch_embedding
    norm_pre                        pre_layrnorm (sic)
    blocks.i.norm1 / norm2          encoder.layers.i.layer_norm1 / layer_norm2
    blocks.i.attn.qkv [3D,D]        encoder.layers.i.self_attn.{q,k,v}_proj (split in thirds)
    blocks.i.attn.proj              encoder.layers.i.self_attn.out_proj
    blocks.i.mlp.fc1 / fc2          encoder.layers.i.mlp.fc1 / fc2
    norm                            post_layernorm

SigLIP: no class token (pos_embed [1,N,D]), a patch bias, no ``norm_pre``, the same blocks;
its attention-pooling head is not exported (LLaVA reads hidden states, never the pooled output).
The activation is whatever the timm blocks run (timm's ``vit_*_clip_*`` use exact GELU, its
``*_quickgelu_*`` QuickGELU; timm's SigLIP exact GELU), so the HF model computes the same.
Anything else (registers, layer scale, q/k norm, another family) is refused by name.
"""
from __future__ import annotations

import torch
from torch import nn

from minijarvis.errors import InputError

SUPPORTED = {"clip": "CLIPVisionModel", "siglip": "SiglipVisionModel"}


def family(name: str) -> str:
    """"clip" or "siglip" from the timm model name; InputError naming the supported ones."""
    low = name.lower()
    kind = "siglip" if "siglip" in low else "clip" if "clip" in low else None
    if kind is None:
        raise InputError(f"context encoder {name!r}: transformers' LLaVA export supports CLIP ViTs "
                         f"({SUPPORTED['clip']}) and SigLIP ViTs ({SUPPORTED['siglip']}) only")
    return kind


def _activation(act: nn.Module, name: str) -> str:
    if type(act).__name__ == "QuickGELU":
        return "quick_gelu"
    if isinstance(act, nn.GELU):
        return "gelu" if act.approximate == "none" else "gelu_pytorch_tanh"
    raise InputError(f"context encoder {name!r}: MLP activation {type(act).__name__} has no "
                     "transformers equivalent here")


def _check_layout(vit: nn.Module, kind: str, name: str) -> None:
    """Refuse timm options the transformers classes do not have."""
    block = vit.blocks[0]
    problems = []
    for part in ("ls1", "ls2", "drop_path1"):
        if not isinstance(getattr(block, part, nn.Identity()), nn.Identity):
            problems.append(part)
    for part in ("q_norm", "k_norm", "norm"):  # attn.norm: timm's scale_attn_norm
        if not isinstance(getattr(block.attn, part, nn.Identity()), nn.Identity):
            problems.append(f"attn.{part}")
    if getattr(vit, "no_embed_class", False) or getattr(vit, "reg_token", None) is not None:
        problems.append("register tokens / no_embed_class")
    want_prefix = 1 if kind == "clip" else 0
    if vit.num_prefix_tokens != want_prefix:
        problems.append(f"{vit.num_prefix_tokens} prefix tokens (expected {want_prefix})")
    has_pre = not isinstance(vit.norm_pre, nn.Identity)
    if has_pre != (kind == "clip"):
        problems.append("norm_pre" if has_pre else "no norm_pre")
    if (vit.patch_embed.proj.bias is not None) != (kind == "siglip"):
        problems.append("patch-embedding bias")
    if block.attn.qkv.bias is None:
        problems.append("qkv without bias")
    if problems:
        raise InputError(f"context encoder {name!r}: {', '.join(problems)} cannot be expressed by "
                         f"transformers' {SUPPORTED[kind]}")


def vision_config(encoder) -> "transformers.PreTrainedConfig":
    """The transformers vision config of a minijarvis :class:`encoders.VisionEncoder`."""
    from transformers import CLIPVisionConfig, SiglipVisionConfig

    vit, name = encoder.model, encoder.name
    kind = family(name)
    _check_layout(vit, kind, name)
    block = vit.blocks[0]
    patch = vit.patch_embed.patch_size
    patch = patch[0] if isinstance(patch, (tuple, list)) else patch
    common = dict(hidden_size=encoder.dim, intermediate_size=block.mlp.fc1.out_features,
                  num_hidden_layers=len(vit.blocks), num_attention_heads=block.attn.num_heads,
                  num_channels=3, image_size=encoder.image_size, patch_size=int(patch),
                  hidden_act=_activation(block.mlp.act, name), layer_norm_eps=block.norm1.eps)
    if kind == "clip":
        return CLIPVisionConfig(**common)
    return SiglipVisionConfig(vision_use_head=False, **common)


def vision_state_dict(encoder) -> dict[str, torch.Tensor]:
    """The encoder's weights under transformers' names (the table in the module docstring;
    transformers 5 names them without the old ``vision_model.`` level), tensors as they are."""
    vit, kind = encoder.model, family(encoder.name)
    src = {k: v.detach() for k, v in vit.state_dict().items()}
    out = {"embeddings.patch_embedding.weight": src["patch_embed.proj.weight"],
           "embeddings.position_embedding.weight": src["pos_embed"][0],
           "post_layernorm.weight": src["norm.weight"], "post_layernorm.bias": src["norm.bias"]}
    if kind == "clip":
        out["embeddings.class_embedding"] = src["cls_token"].reshape(-1)
        out["pre_layrnorm.weight"], out["pre_layrnorm.bias"] = src["norm_pre.weight"], src["norm_pre.bias"]
    else:
        out["embeddings.patch_embedding.bias"] = src["patch_embed.proj.bias"]
    for i in range(len(vit.blocks)):
        b, h = f"blocks.{i}.", f"encoder.layers.{i}."
        for kind_ in ("weight", "bias"):
            q, k, v = src[b + f"attn.qkv.{kind_}"].chunk(3, dim=0)  # timm: rows [q; k; v]
            out[h + f"self_attn.q_proj.{kind_}"] = q
            out[h + f"self_attn.k_proj.{kind_}"] = k
            out[h + f"self_attn.v_proj.{kind_}"] = v
            out[h + f"self_attn.out_proj.{kind_}"] = src[b + f"attn.proj.{kind_}"]
            out[h + f"layer_norm1.{kind_}"] = src[b + f"norm1.{kind_}"]
            out[h + f"layer_norm2.{kind_}"] = src[b + f"norm2.{kind_}"]
            out[h + f"mlp.fc1.{kind_}"] = src[b + f"mlp.fc1.{kind_}"]
            out[h + f"mlp.fc2.{kind_}"] = src[b + f"mlp.fc2.{kind_}"]
    return {k: v.contiguous() for k, v in out.items()}


def hf_vision_model(encoder) -> nn.Module:
    """A transformers vision model holding the encoder's weights (tests compare the two)."""
    from transformers import AutoModel

    model = AutoModel.from_config(vision_config(encoder))
    missing, unexpected = model.load_state_dict(vision_state_dict(encoder), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise RuntimeError(f"vision conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval()
