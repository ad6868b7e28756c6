"""Tests for minijarvis.targets: the feature rules (tokens / pooled), presets, spec parsing,
weights (timm format and the authors' Depth-Anything-V2 format). Offline, tiny random models;
the paper's experts on the meta device (full architectures, no weights, no compute)."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from minijarvis.encoders import normalize
from minijarvis.targets import (TARGET_PRESETS, TargetSpec, build_target, depth_anything_to_timm,
                                parse_target, resolve_layers)


def _images(batch=2, size=192, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _build(key_or_spec, seed=0, size=192, grid=(12, 12)):
    torch.manual_seed(seed)  # timm initialises from the global generator
    return build_target(key_or_spec, size, grid)


@pytest.mark.parametrize("key, shape", [("tiny-depth", (2, 144, 48)), ("tiny-seg", (2, 144, 32)),
                                        ("tiny-gen", (2, 1, 24)), ("tiny-dinov2", (2, 144, 64))])
def test_tiny_targets_shapes(key, shape):
    target = _build(key)
    out = target(_images())
    assert out.shape == shape, f"{key}: got {tuple(out.shape)}"
    assert (target.num_tokens, target.dim) == shape[1:], "num_tokens and dim must describe the output"
    assert not out.requires_grad and not any(p.requires_grad for p in target.parameters())


def test_tokens_rule_averages_the_normed_blocks_without_prefix():
    target = _build("tiny-depth")  # blocks 0 and 1 of a DINOv2 with 4 registers + CLS
    model, seen = target.model, []
    for block in model.blocks:  # DINOv2's layer scale starts at 1e-5: make the blocks differ
        block.ls1.gamma.data.fill_(1.0), block.ls2.gamma.data.fill_(1.0)
    handles = [b.register_forward_hook(lambda m, a, out: seen.append(out)) for b in model.blocks]
    out = target(_images())
    for h in handles:
        h.remove()
    prefix = model.num_prefix_tokens
    assert prefix == 5, "CLS + 4 registers"
    expected = sum(model.norm(s)[:, prefix:] for s in seen) / 2
    assert torch.allclose(out, expected, atol=1e-5), "tokens = mean over blocks of norm(block)[prefix:]"
    last_only = model.norm(seen[1])[:, prefix:]
    assert not torch.allclose(out, last_only, atol=1e-3), "both blocks must count"


def _with_final_norm(target):
    """The target's features of two images, and what its model's final norm gave on the way."""
    seen = []
    handle = target.model.norm.register_forward_hook(lambda m, a, out: seen.append(out))
    try:
        return target(_images(size=target.image_size)), seen[0]
    finally:
        handle.remove()


def test_swin_target_is_last_stage_normed_and_resized_to_the_grid():
    target = _build("tiny-seg")
    out, normed = _with_final_norm(target)
    native = normed.permute(0, 3, 1, 2)  # timm Swin runs NHWC
    assert native.shape[2:] == (6, 6) and target.native_grid == (6, 6), "stride 32 at 192 px"
    expected = F.interpolate(native, size=(12, 12), mode="bilinear", align_corners=False)
    assert torch.allclose(out, expected.flatten(2).transpose(1, 2), atol=1e-5)


def test_pooled_rule_is_the_projected_embedding_at_the_targets_own_resolution():
    target = _build("tiny-gen")
    images = _images()
    assert (target.image_size, target.run_size) == (192, 96), "input at 192, run at img_size 96"
    x = F.interpolate(normalize(images, target.mean, target.std), size=(96, 96), mode="bilinear",
                      align_corners=False, antialias=True)
    expected = target.model.forward_head(target.model.forward_features(x))
    assert target(images).shape == (2, 1, 24)
    assert torch.allclose(target(images)[:, 0], expected, atol=1e-5), "pooled = head(pool(features))"


def test_jarvis_target_preset_is_last_block_normed():
    target = _build("tiny-dinov2", size=96, grid=(6, 6))  # F_tgt runs at the context's 96 px
    out, normed = _with_final_norm(target)
    assert target.spec.blocks == (-1,) and target.spec.name == "dino"
    assert torch.allclose(out, normed[:, 5:], atol=1e-6)


@pytest.mark.parametrize("key, shape", [("depth-anything-v2-l", (1, 576, 1024)),
                                        ("oneformer-swin-l", (1, 576, 1536)),
                                        ("unclip-vit-h", (1, 1, 1024))])
def test_release_experts_build_offline_with_their_shapes(key, shape):
    with torch.device("meta"):
        target = build_target(key, 336, (24, 24))
        out = target(torch.rand(1, 3, 336, 336))
    assert out.shape == shape, f"{key} must give VISPER.md §3's shape"
    assert TARGET_PRESETS["depth-anything-v2-l"].blocks == (4, 11, 17, 23)


def test_parse_target_presets_and_overrides():
    assert parse_target("tiny-depth") == TARGET_PRESETS["tiny-depth"]
    spec = parse_target("tiny-depth, layers=1+3, weights=/x.pth, blocks=-1")
    assert (spec.layers, spec.weights, spec.blocks, spec.encoder) == (
        (1, 3), "/x.pth", (-1,), TARGET_PRESETS["tiny-depth"].encoder)
    spec = parse_target("name=dino,encoder=vit_small_patch14_dinov2,rule=tokens,blocks=4+11,"
                        "timm.depth=12,timm.img_size=224,pretrained=true")
    assert spec == TargetSpec("dino", "vit_small_patch14_dinov2", "tokens", (4, 11),
                              dict(depth=12, img_size=224), pretrained=True)


@pytest.mark.parametrize("text, match", [
    ("nope", "unknown target preset 'nope'"),
    ("tiny-depth,color=red", "unknown key 'color'"),
    ("tiny-depth,layers=1+x", "layers must be integers"),
    ("tiny-depth,layers=0", "layers must be >= 1"),
    ("tiny-depth,rule=avg", "rule must be one of"),
    ("name=d,rule=tokens", "lacks encoder"),
    ("tiny-depth,weights", "not key=value"),
    ("", "empty"),
])
def test_parse_target_errors_name_the_bad_part(text, match):
    with pytest.raises(ValueError, match=match):
        parse_target(text)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_round_trip(tmp_path, suffix):
    source = _build("tiny-seg", seed=1)
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    path = tmp_path / f"seg{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = _build(parse_target(f"tiny-seg,weights={path}"), seed=2)
    fresh = _build("tiny-seg", seed=2)
    images = _images()
    assert torch.equal(loaded(images), source(images)), "weights= must load the file's weights"
    assert not torch.allclose(fresh(images), source(images)), "seeds must give different inits"


def test_depth_anything_authors_checkpoint_maps_to_timm(tmp_path):
    # A tiny DINOv2 saved the authors' way: encoder under "pretrained.", a mask token, a DPT
    # head, and a position embedding for another resolution (theirs: 37x37 at 518 px).
    spec = TargetSpec("depth", "vit_small_patch14_dinov2", "tokens", blocks=(0, 1),
                      kwargs=dict(depth=2, embed_dim=32, num_heads=2, patch_size=16))
    torch.manual_seed(1)
    source = build_target(TargetSpec(**{**spec.__dict__, "kwargs": dict(spec.kwargs, img_size=128)}),
                          128, (8, 8))
    theirs = {f"pretrained.{k}": v.clone() for k, v in source.model.state_dict().items()}
    theirs["pretrained.mask_token"] = torch.zeros(1, 32)
    theirs["depth_head.scratch.output_conv.weight"] = torch.zeros(1, 8, 3, 3)
    assert set(depth_anything_to_timm(theirs)) == set(source.model.state_dict()), \
        "mapping must keep exactly the encoder's keys"
    path = tmp_path / "depth_anything_v2_vits.pth"
    torch.save(theirs, path)
    torch.manual_seed(2)
    loaded = build_target(TargetSpec(**{**spec.__dict__, "weights": str(path)}), 128, (8, 8))
    images = _images(size=128)
    assert torch.allclose(loaded(images), source(images), atol=1e-6), "same weights, same features"
    with pytest.raises(ValueError, match="pretrained"):
        depth_anything_to_timm({"depth_head.x": torch.zeros(1)})


@pytest.mark.parametrize("name, num_layers, expected", [
    ("depth", 32, (8, 20)), ("seg", 32, (10, 18)), ("gen", 32, (12, 20)),  # the release
    ("depth", 26, (7, 16)), ("seg", 28, (9, 16)), ("gen", 28, (11, 18)),  # 6.5 -> 7: half up
    ("depth", 4, (1, 3)), ("seg", 4, (1, 2)), ("gen", 4, (2, 3)),  # tiny
    ("gen", 1, (1,)), ("dino", 32, (8, 20)),  # clamped and deduplicated; other names: depth's
])
def test_resolve_layers_scales_the_release_fractions(name, num_layers, expected):
    spec = TargetSpec(name, "x", "tokens")
    assert resolve_layers(spec, num_layers) == expected


def test_resolve_layers_explicit_and_out_of_range():
    spec = TargetSpec("depth", "x", "tokens", layers=(3, 1, 3))
    assert resolve_layers(spec, 4) == (1, 3)
    with pytest.raises(ValueError, match=r"layers \[5\] outside \[1, 4\]"):
        resolve_layers(TargetSpec("depth", "x", "tokens", layers=(5,)), 4)
