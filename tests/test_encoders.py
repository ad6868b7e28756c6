"""Tests for minijarvis.encoders: which features F_ctx / F_tgt return, normalisation, grid
resize, freezing, weight loading. All offline: tiny random timm models, and the paper's
encoders on the meta device (full architecture, no weights, no compute)."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from minijarvis.config import ENCODERS, ModelConfig, preset
from minijarvis.encoders import VisionEncoder, build_context_encoder, resize_token_grid
from minijarvis.targets import build_target_encoder

# Shrunken SigLIP (384 px, patch 16 -> 24x24) and DINOv2 (patch 14 -> 27x27 at 384 px):
# the real grids, with two narrow blocks so they run in milliseconds.
_SMALL = dict(depth=2, embed_dim=64, num_heads=2)


def _images(batch=2, size=96, seed=0):
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _tiny_cfg(**overrides):
    cfg = preset("tiny", pretrained=False)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def _tiny_pair(seed=0, **overrides):
    torch.manual_seed(seed)  # timm initialises from the global generator
    cfg = _tiny_cfg(**overrides)
    ctx = build_context_encoder(cfg)
    return ctx, build_target_encoder(cfg, ctx.image_size, ctx.grid)


def _capture(module, store, pre=False):
    if pre:
        return module.register_forward_pre_hook(lambda m, args: store.append(args[0]))
    return module.register_forward_hook(lambda m, args, out: store.append(out))


@pytest.mark.parametrize("preset_name", ["tiny-clip", "tiny-dinov2"])
def test_context_features_are_penultimate_block_output_without_norm(preset_name):
    name, kwargs = ENCODERS[preset_name]
    torch.manual_seed(0)
    enc = VisionEncoder(name, **kwargs)  # default features = "penultimate" (LLaVA)
    seen = []
    handle = _capture(enc.model.blocks[-2], seen)
    out = enc(_images())
    handle.remove()
    expected = seen[0][:, enc.num_prefix_tokens:]
    assert torch.equal(out, expected), "context features must equal block[-2]'s output, prefix dropped"
    normed = enc.model.norm(seen[0])[:, enc.num_prefix_tokens:]
    assert not torch.allclose(out, normed, atol=1e-3), "context features must not be final-normed"


@pytest.mark.parametrize("layer, norm", [(-2, False), (-1, True), (0, False), (-1, False), (0, True)])
def test_any_block_with_or_without_norm_is_that_blocks_output(layer, norm):
    name, kwargs = ENCODERS["tiny-clip"]
    torch.manual_seed(0)
    enc = VisionEncoder(name, layer=layer, norm=norm, **kwargs)
    seen = []
    handle = _capture(enc.model.blocks[layer], seen)
    out = enc(_images())
    handle.remove()
    expected = enc.model.norm(seen[0]) if norm else seen[0]
    assert torch.allclose(out, expected[:, 1:], atol=1e-6), \
        f"layer {layer}, norm {norm}: must be {'norm(' if norm else '('}block[{layer}])[:, CLS dropped]"


@pytest.mark.parametrize("preset_name, prefix", [("tiny-clip", 1), ("tiny-dinov2", 5)])
def test_prefix_tokens_are_dropped_for_cls_and_registers(preset_name, prefix):
    name, kwargs = ENCODERS[preset_name]
    for layer, norm in ((-2, False), (-1, True)):
        enc = VisionEncoder(name, layer=layer, norm=norm, **kwargs)
        out = enc(_images())
        assert enc.num_prefix_tokens == prefix, "num_prefix_tokens must count CLS + registers"
        assert out.shape == (2, 6 * 6, 64), f"layer {layer}: tokens must be exactly the H*W patches"


# SigLIP2-So400M/14 with two narrow blocks: the real patch, resolution and grid, no prefix token.
_SIGLIP2 = ModelConfig(ctx_encoder=ENCODERS["siglip2-so400m-384"][0], ctx_kwargs=dict(_SMALL))


def test_siglip_context_features_are_the_final_normed_last_block():
    torch.manual_seed(0)
    ctx = build_context_encoder(_SIGLIP2)
    assert (ctx.layer, ctx.final_norm, ctx.num_prefix_tokens) == (-1, True, 0), \
        "the release reads SigLIP's last_hidden_state: last block, final norm, nothing to drop"
    images = _images(batch=1, size=378)
    x = (images - torch.tensor(ctx.mean).view(1, 3, 1, 1)) / torch.tensor(ctx.std).view(1, 3, 1, 1)
    expected = ctx.model.forward_features(x)  # timm: norm(blocks(x)), before the attention pool
    assert torch.allclose(ctx(images), expected, atol=1e-6), "SigLIP F_ctx must equal forward_features"
    seen = []
    handle = _capture(ctx.model.blocks[-2], seen)
    ctx(images)
    handle.remove()
    assert not torch.allclose(ctx(images), seen[0], atol=1e-3), "SigLIP F_ctx is not the penultimate block"


def test_clip_context_features_are_the_penultimate_block_without_norm():
    torch.manual_seed(0)
    ctx = build_context_encoder(_tiny_cfg())
    assert (ctx.layer, ctx.final_norm) == (-2, False), "CLIP F_ctx: LLaVA's penultimate block, no norm"
    seen = []
    handle = _capture(ctx.model.blocks[-2], seen)
    out = ctx(_images())
    handle.remove()
    assert torch.equal(out, seen[0][:, 1:]), "CLIP F_ctx must equal block[-2]'s output, CLS dropped"


@pytest.mark.parametrize("name, want", [
    ("vit_so400m_patch14_siglip_378.v2_webli", (-1, True)), ("vit_base_patch16_siglip_224", (-1, True)),
    ("vit_large_patch14_clip_quickgelu_336.openai", (-2, False)), ("vit_base_patch16_clip_224", (-2, False)),
    ("vit_large_patch14_dinov2.lvd142m", (-2, False))])
def test_context_features_default_per_family_as_the_release(name, want):
    assert ModelConfig(ctx_encoder=name).context_features() == want


def test_set_context_layer_and_norm_win_over_the_family_default():
    assert ModelConfig(ctx_encoder="vit_base_patch16_siglip_224", ctx_layer=-2,
                       ctx_norm=False).context_features() == (-2, False)
    assert ModelConfig(ctx_layer=3, ctx_norm=True).context_features() == (3, True)
    ctx = build_context_encoder(_tiny_cfg(ctx_layer=0, ctx_norm=True))
    assert (ctx.layer, ctx.final_norm) == (0, True), "the config's layer and norm reach the encoder"


def test_target_features_are_final_norm_of_last_block():
    _, tgt = _tiny_pair()
    seen = []
    handle = _capture(tgt.model.blocks[-1], seen)
    out = tgt(_images())
    handle.remove()
    expected = tgt.model.norm(seen[0])[:, tgt.num_prefix_tokens:]
    assert torch.allclose(out, expected, atol=1e-6), "target = norm(last block)[:, prefix:]"
    assert not torch.allclose(out, seen[0][:, tgt.num_prefix_tokens:], atol=1e-3), \
        "target features must carry the final norm"


def test_each_encoder_normalises_with_its_own_mean_and_std():
    ctx, tgt = _tiny_pair()
    image = torch.full((1, 3, 96, 96), 0.5)
    for enc in (ctx, tgt):
        seen = []
        handle = _capture(enc.model.patch_embed, seen, pre=True)
        enc(image)
        handle.remove()
        mean, std = torch.tensor(enc.mean), torch.tensor(enc.std)
        expected = ((0.5 - mean) / std).view(1, 3, 1, 1).expand_as(image)
        assert torch.allclose(seen[0], expected, atol=1e-6), f"{enc.name}: input must be (x-mean)/std"
    assert ctx.mean != tgt.mean and ctx.std != tgt.std, "CLIP and DINOv2 stats come from timm's data config"


def test_target_grid_is_resized_bilinearly_to_the_context_grid():
    torch.manual_seed(0)
    cfg = ModelConfig(ctx_encoder="vit_so400m_patch16_siglip_384", ctx_kwargs=dict(_SMALL),
                      tgt_encoder="vit_large_patch14_dinov2", tgt_kwargs=dict(_SMALL))
    ctx = build_context_encoder(cfg)
    tgt = build_target_encoder(cfg, ctx.image_size, ctx.grid)
    assert (ctx.image_size, ctx.grid, ctx.num_prefix_tokens) == (384, (24, 24), 0), "SigLIP 384/16"
    assert (tgt.image_size, tgt.native_grid, tgt.grid) == (384, (27, 27), (24, 24)), \
        "DINOv2 must run at the context resolution (27x27) and be resized to the context grid"
    seen = []
    handle = _capture(tgt.model.norm, seen)
    images = _images(batch=2, size=384)
    out = tgt(images)
    handle.remove()
    native = seen[0][:, tgt.num_prefix_tokens:].reshape(2, 27, 27, -1).permute(0, 3, 1, 2)
    expected = F.interpolate(native, size=(24, 24), mode="bilinear", align_corners=False)
    assert out.shape == (2, 576, 64) == ctx(images).shape[:2] + (64,), "one target token per context slot"
    assert torch.allclose(out, expected.flatten(2).transpose(1, 2), atol=1e-6), \
        "resize must be F.interpolate(bilinear, align_corners=False) of the raster map"


def test_resize_token_grid_rejects_tokens_that_do_not_fill_the_grid():
    with pytest.raises(ValueError, match="grid"):
        resize_token_grid(torch.zeros(1, 10, 4), (3, 3), (2, 2))


def test_no_parameter_requires_grad():
    for enc in _tiny_pair():
        assert not any(p.requires_grad for p in enc.parameters()), f"{enc.name} must be frozen"


def test_encoder_stays_in_eval_when_parent_trains():
    ctx, tgt = _tiny_pair()
    parent = nn.ModuleDict(dict(ctx=ctx, tgt=tgt, head=nn.Linear(2, 2)))
    parent.train()
    assert parent["head"].training, "the parent itself must switch to train"
    for enc in (ctx, tgt):
        assert not any(m.training for m in enc.modules()), f"{enc.name} must stay in eval mode"


def test_outputs_carry_no_graph_even_for_grad_requiring_input():
    images = _images().requires_grad_(True)
    for enc in _tiny_pair():
        out = enc(images)
        assert not out.requires_grad and out.grad_fn is None, f"{enc.name} output must be detached"


def test_output_dtype_follows_input_and_autocast():
    ctx, tgt = _tiny_pair()
    images = _images()
    for enc in (ctx, tgt):
        assert enc(images.bfloat16()).dtype == torch.bfloat16, "dtype must follow the input"
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert enc(images).dtype == torch.bfloat16, "dtype must follow autocast"
        enc.to(torch.bfloat16)
        assert enc(images).dtype == torch.float32, "a bf16 encoder must accept float32 images"


@pytest.mark.parametrize("role", ["ctx", "tgt"])
@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_weights_file_round_trip(tmp_path, role, suffix):
    source = _tiny_pair(seed=1)[role == "tgt"]
    state = {k: v.contiguous() for k, v in source.model.state_dict().items()}
    path = tmp_path / f"weights{suffix}"
    save_file(state, path) if suffix == ".safetensors" else torch.save(state, path)
    loaded = _tiny_pair(seed=2, **{f"{role}_weights": str(path)})[role == "tgt"]
    fresh = _tiny_pair(seed=2)[role == "tgt"]
    images = _images()
    assert torch.equal(loaded(images), source(images)), "weights= must load the file's weights"
    assert not torch.allclose(fresh(images), source(images)), "seeds must give different inits"


def test_missing_weights_file_raises_clear_error(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        build_context_encoder(_tiny_cfg(ctx_weights=str(missing)))


def test_weights_file_for_another_architecture_raises(tmp_path):
    ctx, _ = _tiny_pair()
    path = tmp_path / "renamed.safetensors"
    save_file({"other." + k: v.contiguous() for k, v in ctx.model.state_dict().items()}, path)
    with pytest.raises(ValueError, match="does not fit"):
        build_context_encoder(_tiny_cfg(ctx_weights=str(path)))


def test_wrong_image_shape_raises():
    ctx, _ = _tiny_pair()
    with pytest.raises(ValueError, match="96"):
        ctx(_images(size=224))


def test_target_img_size_conflicting_with_context_resolution_raises():
    cfg = _tiny_cfg()
    cfg.tgt_kwargs = dict(cfg.tgt_kwargs, img_size=224)
    with pytest.raises(ValueError, match="context resolution"):
        build_target_encoder(cfg, 96, (6, 6))


@pytest.mark.parametrize("layer", [2, -3])
def test_layer_outside_the_blocks_raises(layer):
    name, kwargs = ENCODERS["tiny-clip"]  # two blocks: indices -2..1
    with pytest.raises(ValueError, match=r"not a block index .*allowed -2\.\.1"):
        VisionEncoder(name, layer=layer, **kwargs)


def test_tiny_presets_attributes():
    ctx, tgt = _tiny_pair()
    assert (ctx.image_size, ctx.grid, ctx.dim, ctx.num_prefix_tokens) == (96, (6, 6), 64, 1)
    assert (tgt.image_size, tgt.grid, tgt.native_grid, tgt.dim, tgt.num_prefix_tokens) == \
        (96, (6, 6), (6, 6), 64, 5)
    assert ctx.name == ENCODERS["tiny-clip"][0] and tgt.name == ENCODERS["tiny-dinov2"][0]


@pytest.mark.parametrize("ctx_key, size, grid, ctx_dim, features", [
    ("clip-l-336", 336, 24, 1024, (-2, False)),  # the paper's default: 24x24, DINOv2 at 336 alike
    # The paper's SigLIP2-So400M/14 @384: 27x27 = 729 tokens; timm's 378 px (27 * 14) holds it.
    ("siglip2-so400m-384", 378, 27, 1152, (-1, True)),
])
def test_paper_encoders_build_offline_with_their_grids(ctx_key, size, grid, ctx_dim, features):
    # Meta device: the full architectures with no weights and no compute (a real CPU build of
    # one ViT-L takes ~10 s); shapes and grids follow the same code path.
    cfg = ModelConfig(ctx_encoder=ENCODERS[ctx_key][0], tgt_encoder=ENCODERS["dinov2-l"][0])
    with torch.device("meta"):
        ctx = build_context_encoder(cfg)
        tgt = build_target_encoder(cfg, ctx.image_size, ctx.grid)
        images = torch.rand(1, 3, size, size)
        ctx_out, tgt_out = ctx(images), tgt(images)
    assert (ctx.image_size, ctx.grid) == (size, (grid, grid)), f"{ctx_key} must give a {grid}x{grid} grid"
    assert (ctx.layer, ctx.final_norm) == features, f"{ctx_key}: the release's context layer and norm"
    assert (tgt.image_size, tgt.native_grid, tgt.grid) == (size, (grid, grid), (grid, grid)), \
        "DINOv2/14 at the context resolution lands on the same grid: no resize"
    assert ctx_out.shape == (1, grid * grid, ctx_dim) and tgt_out.shape == (1, grid * grid, 1024)
    assert len(ctx.model.blocks) == (24 if ctx_key == "clip-l-336" else 27), "full depth"
