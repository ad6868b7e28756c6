"""The MLLM: splicing, the four methods, the mask inside the real forward, gradients, checkpoints."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from minijarvis.attn_mask import build_attention_mask
from minijarvis.model import JarvisModel, sincos_2d, splice_indices
from conftest import SMALL_MASKS, make_batch, tiny_config
from minijarvis.evaluation.inference import generate, score_options
from minijarvis.training.checkpoint import load_checkpoint, save_checkpoint


def build(family="llama", layers=2, stage="align", tokenizer=None, **overrides):
    torch.manual_seed(0)
    return JarvisModel(tiny_config(family, layers, **overrides), SMALL_MASKS, stage, tokenizer)


def test_splice_indices_places_slots_at_each_rows_image_token():
    ids = torch.tensor([[7, 1, 2, 3], [4, 5, 7, 6], [8, 9, 10, 11]])
    text, slot, vis, start, has, length = splice_indices(ids, image_token_id=7, num_visual=3)
    assert length == 6 and start[:2].tolist() == [0, 2] and has.tolist() == [True, True, False]
    assert vis[0].tolist() == [True, True, True, False, False, False]
    assert text[0].tolist() == [-1, -1, -1, 1, 2, 3], "text after the image shifts by N-1"
    assert vis[1].tolist() == [False, False, True, True, True, False]
    assert text[1].tolist() == [0, 1, -1, -1, -1, 3] and slot[1, 2:5].tolist() == [0, 1, 2]
    assert text[2].tolist() == [0, 1, 2, 3, -1, -1], "a text-only row is copied, then padded"
    with pytest.raises(ValueError, match="at most one"):
        splice_indices(torch.tensor([[7, 7]]), 7, 3)


def test_jarvis_step_trains_proj_z_proj_tgt_through_frozen_llm(tokenizer):
    model = build(tokenizer=tokenizer).train()
    out = model(make_batch(model), run_jepa=True)
    assert out["jepa_ran"] and torch.isfinite(out["loss"]) and torch.isfinite(out["jepa_loss"])
    assert torch.allclose(out["loss"], out["ntp_loss"] + out["jepa_loss"])
    out["loss"].backward()
    for name in ("proj.0.weight", "proj_tgt.0.weight", "z"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, f"{name} got no gradient"
    frozen = [n for n, p in model.named_parameters() if n.startswith(("llm.", "context_encoder.",
                                                                      "target_encoder."))]
    assert frozen and all(dict(model.named_parameters())[n].grad is None for n in frozen)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_ntp_loss_on_supervised_positions_equals_the_full_logits_loss(tokenizer, family):
    from minijarvis.losses import ntp_loss
    model = build(family, tokenizer=tokenizer)
    batch = make_batch(model, pad_last=3)
    out = model(batch, torch.Generator().manual_seed(0), run_jepa=True)
    x = model.prepare_inputs(batch, torch.Generator().manual_seed(0), run_jepa=True)
    full = model.llm(inputs_embeds=x["embeds"], attention_mask=x["mask"]).logits
    assert torch.allclose(out["ntp_loss"], ntp_loss(full, x["labels"]), atol=1e-5)


def test_lambda_draw_is_reproducible_and_respects_its_extremes(tokenizer):
    model = build(tokenizer=tokenizer)
    batch = make_batch(model)
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a = [model(batch, g1)["jepa_ran"] for _ in range(8)]
    b = [model(batch, g2)["jepa_ran"] for _ in range(8)]
    assert a == b, "same generator seed must give the same skip decisions (every rank agrees)"
    for lam, expect in ((0.0, True), (1.0, False)):
        model.cfg.jepa_lambda = lam
        assert all(model(batch, g1)["jepa_ran"] == expect for _ in range(4)), f"lambda={lam}"


@pytest.mark.parametrize("method,stage,aux,has_target", [
    ("llava", "align", None, False), ("nomask", "align", "align_loss", True),
    ("viral", "align", None, False), ("viral", "finetune", "align_loss", True),
    ("jarvis", "finetune", None, False)])
def test_each_method_computes_its_own_losses(tokenizer, method, stage, aux, has_target):
    model = build(stage=stage, tokenizer=tokenizer, method=method)
    out = model(make_batch(model))
    assert (model.target_encoder is not None) == has_target, "target encoder presence"
    assert not out["jepa_ran"]
    if aux:
        assert torch.isfinite(out[aux]) and torch.allclose(out["loss"], out["ntp_loss"] + out[aux])
    else:
        assert torch.allclose(out["loss"], out["ntp_loss"])


def test_bidirectional_visual_default_follows_the_release(tokenizer):
    assert build(tokenizer=tokenizer).bidirectional_visual, "jarvis: bidirectional visual tokens"
    assert not build(tokenizer=tokenizer, method="llava").bidirectional_visual, "llava: causal"
    assert build(tokenizer=tokenizer, method="llava", bidirectional_visual=True).bidirectional_visual


def test_viral_aligns_the_middle_layer_and_jarvis_a_quarter(tokenizer):
    assert build(layers=8, tokenizer=tokenizer).jepa_layer == 2
    assert build(layers=8, stage="finetune", tokenizer=tokenizer, method="viral").jepa_layer == 4
    assert build(layers=8, tokenizer=tokenizer, jepa_layer=5).jepa_layer == 5


def _final_states(model, embeds, mask):
    return model.llm(inputs_embeds=embeds, attention_mask=mask,
                     output_hidden_states=True).hidden_states[-1]


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2", "mistral"])
def test_mask_reaches_the_attention_inside_the_real_forward(tokenizer, family):
    """Perturb one slot that some rule hides; with one decoder layer, exactly the positions
    whose mask row allows that key (and the slot itself, via the residual) may change."""
    model = build(family, layers=1, tokenizer=tokenizer).eval()
    batch = make_batch(model, image_at=(2, 5), pad_last=2)
    x = model.prepare_inputs(batch, torch.Generator().manual_seed(1), run_jepa=True)
    layout, start = x["layout"], x["image_start"]
    allowed = build_attention_mask(layout, start, x["embeds"].shape[1], x["padding"])[:, 0]
    base = _final_states(model, x["embeds"], x["mask"])
    b = 1
    slots = {"dropped": layout.dropped[b], "target": layout.targets[b, 0],
             "context": layout.context[b]}
    for role, members in slots.items():
        if not members.any():
            continue
        p = int(start[b]) + int(members.nonzero()[0])
        embeds = x["embeds"].clone()
        embeds[b, p] += 1.0
        changed = (_final_states(model, embeds, x["mask"])[b] - base[b]).abs().amax(-1) > 1e-5
        expect = allowed[b, :, p].clone()
        expect[p] = True
        expect &= x["padding"][b]  # padded rows' outputs are unused; ignore them
        changed &= x["padding"][b]
        wrong = (changed != expect).nonzero().flatten().tolist()
        assert not wrong, f"{family}: perturbing a {role} slot changed the wrong rows {wrong}"
    p = int(start[b]) + int(layout.dropped[b].nonzero()[0]) if layout.dropped[b].any() else None
    if p is not None:
        embeds = x["embeds"].clone()
        embeds[b, p] += 1.0
        changed = (_final_states(model, embeds, x["mask"])[b] - base[b]).abs().amax(-1) > 1e-5
        assert changed.nonzero().flatten().tolist() == [p], "nobody may see a dropped slot"


@pytest.mark.parametrize("stage", ["align", "finetune"])
def test_gradient_checkpointing_gives_the_same_gradients(tokenizer, stage):
    grads = []
    for ckpt in (False, True):
        model = build(stage=stage, tokenizer=tokenizer).train()
        if ckpt:
            model.enable_gradient_checkpointing()
        model(make_batch(model), torch.Generator().manual_seed(0), run_jepa=stage == "align")[
            "loss"].backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and any(k.startswith("llm.") for k in grads[0]) == (
        stage == "finetune")
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_text_only_rows_keep_proj_in_the_graph(tokenizer):
    model = build(stage="finetune", tokenizer=tokenizer).train()
    out = model(make_batch(model, text_only=(0, 1)))
    out["loss"].backward()
    assert model.proj[0].weight.grad is not None, "proj must receive a (zero) gradient for DDP"


def test_checkpoint_round_trip_and_stage2_drops_jarvis_parts(tokenizer, tmp_path):
    model = build(tokenizer=tokenizer)
    with torch.no_grad():
        model.z.add_(1.0)
    batch = make_batch(model)
    loss = model(batch, torch.Generator().manual_seed(5))["loss"]
    save_checkpoint(model, tmp_path / "s1")
    again = load_checkpoint(tmp_path / "s1")
    assert torch.allclose(again(batch, torch.Generator().manual_seed(5))["loss"], loss)
    s2 = load_checkpoint(tmp_path / "s1", stage="finetune")
    assert s2.z is None and s2.proj_tgt is None and s2.target_encoder is None
    assert torch.equal(s2.proj[0].weight, model.proj[0].weight), "stage 2 starts from stage-1 proj"
    save_checkpoint(s2, tmp_path / "s2")
    keys = load_file(str(tmp_path / "s2" / "model.safetensors")).keys()
    assert not [k for k in keys if k.startswith(("z", "proj_tgt", "target_encoder"))]
    assert any(k.startswith("llm.") for k in keys)
    assert load_checkpoint(tmp_path / "s2").stage == "finetune"


def test_image_aspect_follows_the_stage_and_the_context_layer_is_recorded(tokenizer, tmp_path):
    model = build(tokenizer=tokenizer)
    assert model.image_aspect == "crop" and model.cfg.image_aspect is None, "stage 1: the release crops"
    assert (model.cfg.ctx_layer, model.cfg.ctx_norm) == (-2, False), "config.json names F_ctx's block"
    save_checkpoint(model, tmp_path / "s1")
    assert load_checkpoint(tmp_path / "s1").image_aspect == "crop"
    assert load_checkpoint(tmp_path / "s1", stage="finetune").image_aspect == "pad", \
        "a stage-1 checkpoint started in stage 2 pads, as the release's stage 2"
    set_by_user = build(tokenizer=tokenizer, image_aspect="resize")
    save_checkpoint(set_by_user, tmp_path / "r1")
    assert load_checkpoint(tmp_path / "r1", stage="finetune").image_aspect == "resize", \
        "an aspect set in stage 1 is kept"


def test_both_encoders_see_the_same_pixels_each_with_its_own_normalisation(tokenizer):
    model = build(tokenizer=tokenizer)
    batch, seen = make_batch(model), {}
    hooks = [enc.model.patch_embed.register_forward_pre_hook(
        lambda m, args, key=key: seen.setdefault(key, args[0]))
        for key, enc in (("ctx", model.context_encoder), ("tgt", model.target_encoder))]
    model(batch, torch.Generator().manual_seed(0))
    for hook in hooks:
        hook.remove()
    for key, enc in (("ctx", model.context_encoder), ("tgt", model.target_encoder)):
        pixels = seen[key] * torch.tensor(enc.std).view(1, 3, 1, 1) + torch.tensor(enc.mean).view(1, 3, 1, 1)
        assert torch.allclose(pixels, batch["images"], atol=1e-5), f"{key} must see the batch's pixels"
    assert not torch.allclose(seen["ctx"], seen["tgt"]), "CLIP and DINOv2 normalise differently"


def test_pretrained_llm_from_a_local_directory(tokenizer, tmp_path):
    source = build(tokenizer=tokenizer)
    source.llm.save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    cfg = dataclasses.replace(tiny_config(), llm_name=str(tmp_path / "llm"), llm_pretrained=True,
                              llm_arch={}, tokenizer=str(tmp_path / "llm"))
    model = JarvisModel(cfg, SMALL_MASKS)
    for a, b in zip(model.llm.parameters(), source.llm.parameters()):
        assert torch.equal(a, b)
    assert torch.isfinite(model(make_batch(model), run_jepa=True)["loss"])
    save_checkpoint(model, tmp_path / "ckpt")
    keys = load_file(str(tmp_path / "ckpt" / "model.safetensors")).keys()
    assert not any(k.startswith("llm.") for k in keys), "a frozen pretrained LLM is not copied"
    stage2 = load_checkpoint(tmp_path / "ckpt", stage="finetune")
    assert torch.isfinite(stage2(make_batch(stage2))["loss"])


def test_generation_with_cache_matches_recomputing_everything(tokenizer):
    model = build(tokenizer=tokenizer).eval()
    images = torch.rand(1, 3, model.image_size, model.image_size)
    answer = generate(model, images, ["what colour is the cube?"], max_new_tokens=6)[0]
    # Reference: greedy without cache, the whole sequence each step.
    from minijarvis.data.llava import encode_prompt
    ids = encode_prompt(model.tokenizer, "what colour is the cube?", has_image=True)
    new = []
    for _ in range(6):
        row = ids + new
        batch = dict(input_ids=torch.tensor([row]), attention_mask=torch.ones(1, len(row)),
                     labels=torch.full((1, len(row)), -100), images=images,
                     has_image=torch.tensor([True]))
        x = model.prepare_inputs(batch)
        nxt = int(model.llm(inputs_embeds=x["embeds"], attention_mask=x["mask"]).logits[0, -1, :len(model.tokenizer)].argmax())
        if nxt in (model.tokenizer.eos_token_id, model.tokenizer.get_vocab().get("<|end|>")):
            break
        new.append(nxt)
    assert answer == model.tokenizer.decode(new, skip_special_tokens=True).strip()


def test_generation_never_predicts_a_row_past_the_tokenizer(tokenizer):
    """The LM head may have more rows than the tokenizer has ids (a padded table; export puts
    VisPer-LM's task tokens there): those name no token and are never generated."""
    model = build(tokenizer=tokenizer).eval()
    n = len(model.tokenizer)
    head = model.llm.get_output_embeddings().weight
    if head.shape[0] <= n:
        pytest.skip("this tokenizer fills the LM head")
    with torch.no_grad():
        head[n:] = 50 * head[:n].abs().max()  # every row past the tokenizer would win the argmax
    seen, grad = [], []
    decode = model.tokenizer.decode
    model.tokenizer.decode = lambda ids, **kw: (seen.extend(ids), grad.append(torch.is_grad_enabled()),
                                                decode(ids, **kw))[2]
    images = torch.rand(1, 3, model.image_size, model.image_size)
    generate(model, images, ["what colour is the cube?"], max_new_tokens=4)
    assert seen and max(seen) < n
    assert grad == [False], "generate builds no autograd graph"


def test_score_options_ranks_by_log_likelihood(tokenizer):
    model = build(tokenizer=tokenizer).eval()
    images = torch.rand(2, 3, model.image_size, model.image_size)
    scores = score_options(model, images, ["q one", "q two"], [["A", "B", "C"], ["yes", "no"]])
    assert [s.shape[0] for s in scores] == [3, 2] and all(torch.isfinite(s).all() for s in scores)
    assert all((s <= 0).all() for s in scores), "log-likelihoods are <= 0"
    alone = score_options(model, images[1:], ["q two"], [["no"]])[0]
    assert torch.allclose(alone, scores[1][1:], atol=1e-5), "batching options changes a score"


def test_option_rows_are_cached_per_chat_template_and_a_bad_option_names_its_prompt(tokenizer):
    """score_options encodes a repeated prompt once (benchmarks repeat them), but a changed chat
    template encodes it again; an option that tokenizes to nothing names its prompt and option."""
    import copy
    from minijarvis.evaluation.inference import _option_rows
    tok = copy.deepcopy(tokenizer)
    first = _option_rows(tok, tok.chat_template, "q", ("A", "B"), True)
    assert _option_rows(tok, tok.chat_template, "q", ("A", "B"), True) is first, "a repeated prompt is encoded again"
    tok.chat_template = "{{ '<|system|>\\nBe brief.<|end|>\\n' }}" + tok.chat_template  # still prefix-stable
    again = _option_rows(tok, tok.chat_template, "q", ("A", "B"), True)
    assert again[0][0] != first[0][0], "a changed template gave the old rows"
    model = build(tokenizer=tokenizer).eval()
    with pytest.raises(ValueError, match=r"prompt 1: option '': "):
        score_options(model, torch.rand(2, 3, model.image_size, model.image_size), ["q", "r"], [["A"], ["B", ""]])


def test_mask_form_follows_the_attention_backend_and_gives_the_same_losses(tokenizer):
    """SDPA gets the bool mask (as HF gives it on LLaVA's causal steps), eager the additive
    one (eager ignores bool masks); same weights, same batch, same losses."""
    sdpa = build(tokenizer=tokenizer, llm_attn="sdpa").eval()
    eager = build(tokenizer=tokenizer, llm_attn="eager").eval()
    eager.load_state_dict(sdpa.state_dict())
    batch = make_batch(sdpa, image_at=(2, 5), pad_last=2)
    out = {}
    for name, model in (("sdpa", sdpa), ("eager", eager)):
        with torch.no_grad():
            x = model.prepare_inputs(batch, torch.Generator().manual_seed(1), run_jepa=True)
            out[name] = model(batch, torch.Generator().manual_seed(1), run_jepa=True)
        allowed = build_attention_mask(x["layout"], x["image_start"], x["embeds"].shape[1], x["padding"])
        if name == "sdpa":
            assert x["mask"].dtype == torch.bool and torch.equal(x["mask"], allowed)
        else:
            assert x["mask"].dtype == torch.float32 and torch.equal(x["mask"] == 0, allowed)
    for key in ("ntp_loss", "jepa_loss"):
        assert torch.allclose(out["sdpa"][key], out["eager"][key], atol=1e-5), key


def test_jepa_loss_on_target_slots_only_equals_the_loss_over_all_slots(tokenizer):
    """proj_tgt runs on the target-block slots alone (flattened over the batch); the value is
    jepa_loss over all [B, N] slots, as written in losses.py, and so is its gradient."""
    from minijarvis.losses import jepa_loss
    model = build(tokenizer=tokenizer).train()
    batch = make_batch(model, image_at=(2, 5))
    x = model.prepare_inputs(batch, torch.Generator().manual_seed(3), run_jepa=True)
    h = torch.randn(x["embeds"].shape[0], x["embeds"].shape[1], model.llm.config.hidden_size, requires_grad=True)
    target = torch.randn(h.shape[0], model.num_visual, model.proj_tgt[-1].out_features)
    fast = model._aux_loss(h, target, x)
    idx = x["image_start"][:, None] + torch.arange(model.num_visual)
    pred = model.proj_tgt(h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1])))
    full = jepa_loss(pred, target, x["layout"].targets)
    assert torch.allclose(fast, full, atol=1e-6)
    g_fast, = torch.autograd.grad(fast, h)
    g_full, = torch.autograd.grad(full, h)
    assert torch.allclose(g_fast, g_full, atol=1e-6)
    b, i = x["layout"].target_union.logical_not().nonzero(as_tuple=True)
    assert len(b) and g_fast[b, x["image_start"][b] + i].abs().sum() == 0, "non-target slots get no gradient"


def test_sincos_phi_is_the_2d_formula():
    phi = sincos_2d((2, 3), 8)
    assert phi.shape == (6, 8)
    # slot 4 = row 1, col 1: row half = [sin(1*w), cos(1*w)], w = [1, 1/100]
    w = torch.tensor([1.0, 0.01])
    assert torch.allclose(phi[4, :4], torch.cat([w.sin(), w.cos()]), atol=1e-6)
    assert torch.allclose(phi[1, :4], torch.tensor([0.0, 0.0, 1.0, 1.0])), "row 0 -> sin 0, cos 1"


def test_pos_embed_adds_phi_to_the_latent(tokenizer):
    model = build(tokenizer=tokenizer, pos_embed=True)
    x = model.prepare_inputs(make_batch(model), torch.Generator().manual_seed(0), run_jepa=True)
    t = x["layout"].target_union[0].nonzero().flatten()[:2]
    expect = model.z + model.phi[t]
    assert torch.allclose(x["vis"][0, t], expect), "target slots carry z + phi(i)"


def test_flex_attention_block_mask_gives_the_dense_mask_result(tokenizer):
    """The optional FlexAttention path (a BlockMask built from the same bool mask) computes
    the same forward as SDPA with the dense mask (its backward needs CUDA)."""
    dense = build(layers=1, tokenizer=tokenizer).eval()
    flex = build(layers=1, tokenizer=tokenizer, llm_attn="flex_attention").eval()
    flex.load_state_dict(dense.state_dict())
    batch = make_batch(dense, pad_last=2)
    with torch.no_grad():
        a = dense(batch, torch.Generator().manual_seed(1), run_jepa=True)
        b = flex(batch, torch.Generator().manual_seed(1), run_jepa=True)
    assert torch.allclose(a["ntp_loss"], b["ntp_loss"], atol=1e-5)
    assert torch.allclose(a["jepa_loss"], b["jepa_loss"], atol=1e-5)


@pytest.mark.parametrize("family,attn", [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"),
                                         ("gemma2", "auto"), ("mistral", "sdpa")])
def test_skipping_dropped_slots_gives_the_same_losses_and_gradients(tokenizer, family, attn):
    """skip_dropped (the default) leaves the slots nobody attends out of the LLM's sequence,
    with their position ids kept; the release computes them. Same losses, same gradients."""
    model = build(family, tokenizer=tokenizer, llm_attn=attn).train()
    batch = make_batch(model, batch_size=3, image_at=(0, 2, 4), pad_last=3)
    x = model.prepare_inputs(batch, torch.Generator().manual_seed(5), run_jepa=True, skip_dropped=True)
    full_len = x["index_of"].shape[1]
    assert x["positions"] is not None and x["embeds"].shape[1] < full_len, "some slots were skipped"
    last = x["image_start"] + model.num_visual - 1  # always dropped; predicts the first caption token
    assert (x["positions"] == last[:, None]).any(1).all(), "a dropped slot whose output is read stays"
    results = {}
    for skip in (True, False):
        model.cfg.skip_dropped = skip
        model.zero_grad(set_to_none=True)
        out = model(batch, torch.Generator().manual_seed(5), run_jepa=True)
        out["loss"].backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results[skip] = (out, grads)
    (a, ga), (b, gb) = results[True], results[False]
    for key in ("ntp_loss", "jepa_loss"):
        assert torch.allclose(a[key], b[key], atol=1e-5), key
    assert ga.keys() == gb.keys() and {"z", "proj.0.weight", "proj_tgt.0.weight"} <= ga.keys()
    for name in ga:
        assert torch.allclose(ga[name], gb[name], atol=1e-5, rtol=1e-4), name


@pytest.mark.parametrize("family,method,attn", [("llama", "llava", "sdpa"), ("llama", "jarvis", "sdpa"),
                                                ("llama", "jarvis", "eager"), ("gemma2", "jarvis", "auto"),
                                                ("qwen2", "visper", "sdpa")])
def test_grouped_option_scores_equal_one_full_forward_per_prompt(tokenizer, family, method, attn):
    """score_options puts several prompts' options in one forward, with the LM head on the reply
    tokens only. Each score must be what the full logits of that prompt's own rows give, for any
    grouping, mask form (JARVIS's bidirectional visual block, SDPA's bool or eager's additive
    mask) or LLM family (Gemma2's soft-capped logits)."""
    from minijarvis.data.llava import encode_reply
    from minijarvis.evaluation.inference import _batch, _option_rows

    def option_rows(prompt, opts, has_image=True):  # one row per option, as training saw each reply
        return [list(x) for x in zip(*(encode_reply(tokenizer, prompt, o, has_image=has_image) for o in opts))]

    model = build(family, tokenizer=tokenizer, method=method, llm_attn=attn).eval()
    images = torch.rand(3, 3, model.image_size, model.image_size)
    prompts = ["How many cubes?\n(A) 1\n(B) 2", "Is the red cube left of the cone?", "q"]
    options = [["A", "B"], ["yes", "no", "a much longer reply than the others"], ["A", "B", "C", "D"]]
    # option letters share their prompt's one row; replies of other lengths do not
    assert [len(_option_rows(tokenizer, tokenizer.chat_template, p, tuple(o), True)[0])
            for p, o in zip(prompts, options)] == [1, 3, 1]
    want = []
    with torch.no_grad():
        for i, (p, opts) in enumerate(zip(prompts, options)):
            rows, labels = option_rows(p, opts)
            x = model.prepare_inputs(_batch(model, rows, images[i:i + 1].expand(len(opts), -1, -1, -1), labels))
            logits = model.llm(inputs_embeds=x["embeds"], attention_mask=x["mask"]).logits.float()
            target = x["labels"][:, 1:]
            logp = logits[:, :-1].log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
            want.append((logp * (target != -100)).sum(1))
    for max_rows in (1, 5, 64):
        got = score_options(model, images, prompts, options, max_rows=max_rows)
        assert [g.shape[0] for g in got] == [2, 3, 4]
        for g, w in zip(got, want):
            assert torch.allclose(g, w, atol=1e-4), (max_rows, g, w)
    if method == "llava":  # text-only prompts: no image token, every row reads F_ctx of a blank image
        rows, labels = option_rows(prompts[0], options[0], has_image=False)
        with torch.no_grad():
            x = model.prepare_inputs(_batch(model, rows, None, labels))
            logits = model.llm(inputs_embeds=x["embeds"], attention_mask=x["mask"]).logits.float()
        target = x["labels"][:, 1:]
        logp = logits[:, :-1].log_softmax(-1).gather(-1, target.clamp(min=0)[..., None])[..., 0]
        text_only = score_options(model, None, prompts[:1], options[:1])[0]
        assert torch.allclose(text_only, (logp * (target != -100)).sum(1), atol=1e-4)
    _, labels = option_rows(prompts[1], options[1])
    tokens = torch.tensor([sum(v != -100 for v in lab) for lab in labels], dtype=torch.float)
    assert tokens[2] > tokens[0], "the longer reply has more tokens"
    normalized = score_options(model, images[1:2], prompts[1:2], options[1:2], normalize=True)[0]
    assert torch.allclose(normalized, want[1] / tokens, atol=1e-4), "normalize divides by the reply's tokens"
