"""VisPer-LM (minijarvis.visper + its place in the model): the predictor, the task tokens, the
inputs each predictor sees, InfoNCE (also across two gloo ranks), the loss sum, what trains in
each stage, checkpoints and inference. Tiny random models on CPU."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from conftest import FAMILIES, make_batch, tiny_config
from minijarvis.losses import info_nce
from minijarvis.model import JarvisModel, layer_outputs
from minijarvis.training.runtime import read_log
from minijarvis.visper import (TOKENS_PER_TARGET, Resampler, chunk_means, task_token_index,
                               visper_losses)
from minijarvis.evaluation.inference import generate, score_options
from minijarvis.training.checkpoint import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


def _model(stage="align", seed=0, **overrides):
    torch.manual_seed(seed)
    return JarvisModel(tiny_config(method="visper", layers=4, **overrides), stage=stage)


# ---------------------------------------------------------------- the predictor
def _reference_resampler(m: Resampler, x, queries, keys):
    """VISPER.md §5 written out by hand, one sample and one head at a time."""
    outs = []
    for b in range(x.shape[0]):
        xb, qb = m.proj_in(x[b]), m.proj_in(queries[0])
        qn = F.layer_norm(qb, qb.shape[-1:], m.norm_q.weight, m.norm_q.bias)
        kv = torch.cat([F.layer_norm(xb, xb.shape[-1:], m.norm_x.weight, m.norm_x.bias)[keys[b]], qn])
        q_all, (k_all, v_all) = qn @ m.to_q.weight.T, (kv @ m.to_kv.weight.T).chunk(2, -1)
        heads = []
        for h in range(m.heads):
            cols = slice(h * m.head_dim, (h + 1) * m.head_dim)
            scores = q_all[:, cols] @ k_all[:, cols].T / m.head_dim ** 0.5
            heads.append(scores.softmax(-1) @ v_all[:, cols])
        qb = qb + torch.cat(heads, -1) @ m.to_out.weight.T
        ln, fc1, _, fc2 = m.ffn
        qb = qb + F.gelu(F.layer_norm(qb, qb.shape[-1:], ln.weight, ln.bias) @ fc1.weight.T) @ fc2.weight.T
        out = qb @ m.proj_out.weight.T + m.proj_out.bias
        outs.append(F.layer_norm(out, out.shape[-1:], m.norm_out.weight, m.norm_out.bias))
    return torch.stack(outs)


def test_resampler_matches_hand_written_reference():
    torch.manual_seed(0)
    m = Resampler(d_in=12, width=20, d_out=6, heads=4, head_dim=5)
    for p in m.parameters():  # fixed, non-trivial weights (LayerNorms included)
        p.data.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.dim() == 1 else 0.0))
    x, queries = torch.randn(3, 9, 12), torch.randn(1, 4, 12)
    keys = torch.rand(3, 9) > 0.3
    keys[:, 0] = True
    got = m(x, queries, keys)
    assert got.shape == (3, 4, 6)
    assert torch.allclose(got, _reference_resampler(m, x, queries, keys), atol=1e-5)
    assert all(lin.bias is None for lin in (m.to_q, m.to_kv, m.to_out, m.ffn[1], m.ffn[3])), \
        "no biases in attention or FFN"


def test_chunk_means_averages_contiguous_chunks():
    rows = torch.randn(576, 5)
    tokens = chunk_means(rows, 8)
    for i in range(8):
        assert torch.allclose(tokens[i], rows[72 * i:72 * i + 72].mean(0), atol=1e-6), f"token {i}"
    uneven = chunk_means(torch.arange(10.0)[:, None], 4)[:, 0]  # chunks of 3, 2, 3, 2 rows
    assert torch.allclose(uneven, torch.tensor([1.0, 3.5, 6.0, 8.5]))


# ---------------------------------------------------------------- task tokens in the sequence
def test_task_tokens_sit_right_after_the_image_slots():
    model = _model()
    batch = make_batch(model, 3, text_len=10, image_at=(0, 3, 6), pad_last=2)
    x = model.prepare_inputs(batch)
    n, tokens = model.num_visual, model.task_tokens()
    assert tokens.shape == (3 * TOKENS_PER_TARGET, model.llm.config.hidden_size)
    assert model.task_tokens.names == ["gen", "depth", "seg"], "order of the targets as given"
    vis = model.proj(model.context_encoder(batch["images"]))
    for b, start in enumerate((0, 3, 6)):
        assert int(x["image_start"][b]) == start, "positions come from the spliced sequence"
        assert torch.equal(x["embeds"][b, start:start + n], vis[b]), "image slots first"
        assert torch.equal(x["embeds"][b, start + n:start + n + 24], tokens), "then the 24 task tokens"
        assert (x["labels"][b, start:start + n + 24] == -100).all(), "task tokens are never supervised"
        text = model.llm.get_input_embeddings()(batch["input_ids"][b, start + 1])
        assert torch.equal(x["embeds"][b, start + n + 24], text), "the text resumes after the tokens"
    gen, depth = model.task_tokens.rows["gen"], model.task_tokens.rows["depth"]
    assert torch.equal(tokens[:8], gen), "pooled target: its 8 raw rows"
    assert depth.shape[0] == n and torch.allclose(tokens[8:16], chunk_means(depth), atol=1e-6)


def test_task_token_index_marks_each_targets_tokens():
    owner = task_token_index(torch.tensor([0, 2, 9]), 9, 3, 2)  # 3 image slots, 2 targets
    assert owner.tolist() == [[-1, -1, -1, 0, 0, 0, 0, 0, 0],
                              [-1, -1, -1, -1, -1, 0, 0, 0, 0],
                              [-1] * 9], "row 0: slots 0-2, target 0 at 3-10 (cut at L=9)"


def _loss_terms(model, batch, hidden_edit=None, attend_padding=False):
    """Visper terms from hooked hidden states, optionally edited before the predictors."""
    x = model.prepare_inputs(batch)
    targets = model.visper.encode_batch(batch["images"], x["has_image"])
    with layer_outputs(model.llm.model.layers, model.visper.all_layers) as h:
        model.llm.model(inputs_embeds=x["embeds"], attention_mask=x["mask"], use_cache=False)
    if hidden_edit is not None:
        h = {layer: hidden_edit(v.clone(), x) for layer, v in h.items()}
    model.cfg.visper_attend_padding = attend_padding
    return visper_losses(model, h, targets, x)


def _perturb(positions_of):
    def edit(h, x):
        for b, p in positions_of(x):
            h[b, p] += 5.0
        return h
    return edit


def test_predictors_see_neither_other_tasks_tokens_nor_padding():
    model = _model()
    batch = make_batch(model, 2, text_len=10, image_at=(0, 3), pad_last=3)
    base = _loss_terms(model, batch)
    n = model.num_visual
    depth_tok = lambda x: [(b, int(x["image_start"][b]) + n + 8 + j) for b in range(2) for j in range(8)]  # noqa
    padded = lambda x: [(1, p) for p in range(x["embeds"].shape[1]) if not x["padding"][1, p]]  # noqa
    text = lambda x: [(0, x["embeds"].shape[1] - 1)]  # noqa
    moved = _loss_terms(model, batch, _perturb(depth_tok))
    for key in base:
        if key.startswith("visper/") and "/depth/" not in key:
            assert torch.allclose(moved[key], base[key], atol=1e-6), f"{key} must not see depth's tokens"
    assert any(not torch.allclose(moved[k], base[k]) for k in base if "/depth/" in k), \
        "depth's predictors must see depth's own tokens"
    assert padded(model.prepare_inputs(batch)), "the batch must hold padding"
    same = _loss_terms(model, batch, _perturb(padded))
    assert all(torch.allclose(same[k], base[k], atol=1e-6) for k in base), "padding is out of the keys"
    release = _loss_terms(model, batch, attend_padding=True)
    release_moved = _loss_terms(model, batch, _perturb(padded), attend_padding=True)
    assert not torch.allclose(release["visper_loss"], release_moved["visper_loss"]), \
        "--visper-attend-padding: the release attends padding"
    changed = _loss_terms(model, batch, _perturb(text))
    assert not torch.allclose(changed["visper_loss"], base["visper_loss"]), "text is an input"


# ---------------------------------------------------------------- losses
def test_info_nce_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(4, 3, 5, generator=g), torch.randn(4, 3, 5, generator=g)
    s = torch.tensor(2.0)
    p = pred.flatten(1) / pred.flatten(1).norm(dim=1, keepdim=True)
    y = target.flatten(1) / target.flatten(1).norm(dim=1, keepdim=True)
    logits = (p @ y.T) * torch.exp(s)
    expected = -(logits.diag() - logits.logsumexp(1)).mean()
    assert torch.allclose(info_nce(pred, target, s), expected, atol=1e-5)
    hot = torch.tensor(10.0)  # exp(10) > 100: the scale is clamped at 100
    assert torch.allclose(info_nce(pred, target, hot), info_nce(pred, target, torch.log(torch.tensor(100.0))))
    empty = torch.zeros(0, 3, 5, requires_grad=True)
    assert info_nce(empty, empty.detach(), s).item() == 0.0, "no sample: 0, never NaN"


def test_info_nce_negatives_come_from_every_rank(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{ROOT}:{ROOT / 'tests'}", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(30500 + os.getpid() % 1000), str(ROOT / "tests" / "visper_dist_worker.py")]
    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"nce{r}.json").read_text()) for r in (0, 1)]
    # One process on the concatenated batch: the mean over ranks of their losses (what DDP
    # averages), and each rank's prediction gradients (x 2: a mean over half the samples).
    from visper_dist_worker import data
    pred, target, s = data()
    pred.requires_grad_(True)
    full = info_nce(pred, target, s)
    full.backward()
    assert abs((ranks[0]["loss"] + ranks[1]["loss"]) / 2 - full.item()) < 1e-5
    for r, rank in enumerate(ranks):
        rows = pred.grad[r * 3:(r + 1) * 3] * 2
        assert torch.allclose(torch.tensor(rank["grad"]), rows, atol=1e-5), f"rank {r} gradients"
    local = info_nce(pred[:3].detach(), target[:3], s).item()
    assert abs(ranks[0]["loss"] - local) > 1e-4, "rank 0 must use rank 1's targets as negatives"


def test_loss_is_ntp_plus_weighted_sum_of_per_layer_terms():
    model = _model(visper_weight=0.7)
    batch = make_batch(model, 2)
    out = model(batch)
    terms = {k: v for k, v in out.items() if k.startswith("visper/")}
    layers = model.visper.layers
    assert set(terms) == {f"visper/{t}/l{j}" for t in layers for j in layers[t]}
    assert layers == {"gen": (2, 3), "depth": (1, 3), "seg": (1, 2)}, "release fractions of 4 layers"
    assert torch.allclose(out["visper_loss"], 0.7 * sum(terms.values()))
    assert torch.allclose(out["loss"], out["ntp_loss"] + out["visper_loss"])
    assert all(v > 0 for v in terms.values()), "embedding losses are non-zero (the release's mask.zero_())"
    out["loss"].backward()
    for name in ("proj.0.weight", "task_tokens.rows.depth", "visper.predictors.depth_l3.proj_in.weight",
                 "visper.log_scales.gen"):
        grad = dict(model.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, f"{name} gets no gradient"


def test_term_is_smooth_l1_plus_contrastive_share():
    batch = make_batch(_model(), 2)
    plain = _model(visper_contrastive=0.0)(batch)
    mixed = _model(visper_contrastive=0.3)(batch)
    model = _model()
    x = model.prepare_inputs(batch)
    targets = model.visper.encode(batch["images"])
    with layer_outputs(model.llm.model.layers, [1]) as h:
        model.llm.model(inputs_embeds=x["embeds"], attention_mask=x["mask"], use_cache=False)
    owner = task_token_index(x["image_start"], x["embeds"].shape[1], model.num_visual, 3)
    keys = x["padding"] & ((owner == -1) | (owner == 1))  # depth is target 1 (gen, depth, seg)
    pred = model.visper.predictors["depth_l1"](h[1], model.task_tokens.rows["depth"][None], keys)
    expected_l1 = F.smooth_l1_loss(pred, targets["depth"])
    assert torch.allclose(plain["visper/depth/l1"], expected_l1, atol=1e-5)
    nce = info_nce(pred, targets["depth"], torch.tensor(2.0))
    assert torch.allclose(mixed["visper/depth/l1"], expected_l1 + 0.3 * nce, atol=1e-5)


def test_samples_without_an_image_contribute_nothing():
    model = _model()
    both = make_batch(model, 2, text_only=(1,))
    alone = {k: v[:1] for k, v in both.items()}
    a, b = model(both), model(alone)
    for key in a:
        if key.startswith("visper"):
            assert torch.allclose(a[key], b[key], atol=1e-5), key


# ---------------------------------------------------------------- what trains, checkpoints
def _step(model, batch, lr=1e-2):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    model(batch)["loss"].backward()
    opt.step()


def test_stage1_trains_exactly_proj_predictors_tokens_temperatures():
    model = _model()
    train = {n.split(".")[0] if not n.startswith("visper.") else ".".join(n.split(".")[:2])
             for n, p in model.named_parameters() if p.requires_grad}
    assert train == {"proj", "task_tokens", "visper.predictors", "visper.log_scales"}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _step(model, make_batch(model, 2))
    after = model.state_dict()
    for key, value in before.items():
        changed = not torch.equal(value, after[key])
        should = key.startswith(("proj.", "task_tokens.", "visper.predictors.", "visper.log_scales."))
        if key.startswith(("llm.", "context_encoder.", "visper.targets.")):
            assert not changed, f"{key} must stay bit-identical in stage 1"
        elif should and key.endswith(("proj_in.weight", "log_scales.gen", "rows.seg", "proj.0.weight")):
            assert changed, f"{key} must train in stage 1"


def test_stage2_keeps_tokens_frozen_in_the_checkpoint_and_drops_the_head(tmp_path):
    stage1 = _model()
    _step(stage1, make_batch(stage1, 2))
    save_checkpoint(stage1, tmp_path / "s1")
    model = load_checkpoint(tmp_path / "s1", stage="finetune")
    assert model.visper is None and model.target_encoder is None
    assert torch.equal(model.task_tokens.rows["depth"], stage1.task_tokens.rows["depth"])
    assert not any(p.requires_grad for p in model.task_tokens.parameters())
    tokens, llm = model.task_tokens().clone(), model.llm.lm_head.weight.clone()
    _step(model, make_batch(model, 2), lr=1e-3)
    assert torch.equal(model.task_tokens(), tokens), "task tokens stay bit-identical in stage 2"
    assert not torch.equal(model.llm.lm_head.weight, llm), "the LLM trains in stage 2"
    save_checkpoint(model, tmp_path / "s2")
    from safetensors.torch import load_file
    keys = load_file(str(tmp_path / "s2" / "model.safetensors")).keys()
    assert {"task_tokens.rows.gen", "task_tokens.rows.depth", "task_tokens.rows.seg"} <= set(keys)
    assert not any(k.startswith("visper.") for k in keys), "no predictor, temperature or target"
    again = load_checkpoint(tmp_path / "s2")
    assert torch.equal(again.task_tokens(), tokens)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_both_stages_run_on_every_llm_family(family, tmp_path):
    """Stage 1 trains every (target, layer) term with the LLM untouched; its checkpoint starts
    stage 2, which trains the LLM, keeps the tokens and generates with them in the sequence."""
    model = _model(family=family)
    llm = {k: v.clone() for k, v in model.llm.state_dict().items()}
    batch = make_batch(model, 2)
    out = model(batch)
    terms = {k: v for k, v in out.items() if k.startswith("visper/")}
    assert len(terms) == 6 and all(torch.isfinite(v) and v > 0 for v in terms.values()), terms
    out["loss"].backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2).step()
    assert all(torch.equal(v, model.llm.state_dict()[k]) for k, v in llm.items()), "stage 1: LLM frozen"
    save_checkpoint(model, tmp_path / "s1")
    stage2 = load_checkpoint(tmp_path / "s1", stage="finetune")
    tokens, head = stage2.task_tokens().clone(), stage2.llm.lm_head.weight.clone()
    _step(stage2, make_batch(stage2, 2), lr=1e-3)
    assert torch.equal(stage2.task_tokens(), tokens) and not torch.equal(stage2.llm.lm_head.weight, head)
    stage2.eval()
    images = torch.rand(1, 3, stage2.image_size, stage2.image_size)
    assert len(generate(stage2, images, ["what?"], max_new_tokens=2)) == 1


def test_inference_keeps_the_task_tokens_in_the_sequence():
    model = _model(stage="finetune").eval()
    seen = []
    hook = model.llm.model.register_forward_pre_hook(
        lambda m, a, kw: seen.append(kw["inputs_embeds"].shape[1]), with_kwargs=True)
    images = torch.rand(1, 3, model.image_size, model.image_size)
    generate(model, images, ["what?"], max_new_tokens=1)
    score_options(model, images, ["what?"], [["a", "b"]])
    hook.remove()
    from minijarvis.data.llava import encode_prompt
    prompt = len(encode_prompt(model.tokenizer, "what?"))
    assert seen[0] == prompt - 1 + model.num_visual + 24, "generation: image slots + 24 task tokens"
    assert seen[-1] > prompt - 1 + model.num_visual + 24, "option scoring too"


def test_layer_outputs_equal_hidden_states():
    model = _model()
    x = model.prepare_inputs(make_batch(model, 2))
    with layer_outputs(model.llm.model.layers, [1, 3]) as h:
        out = model.llm.model(inputs_embeds=x["embeds"], attention_mask=x["mask"],
                              output_hidden_states=True, use_cache=False)
    assert sorted(h) == [1, 3]
    for j in (1, 3):
        assert torch.equal(h[j], out.hidden_states[j]), f"h_{j} = hidden_states[{j}]"


def test_bad_target_spec_is_a_clear_error():
    # The specs are parsed where they are used (config.py imports no method code): building the model.
    with pytest.raises(ValueError, match="unknown target preset 'nope'"):
        _model(visper_targets=("tiny-gen", "nope"))
    with pytest.raises(ValueError, match="unique names"):
        _model(visper_targets=("tiny-gen", "tiny-gen"))
    with pytest.raises(ValueError, match=r"layers \[9\] outside \[1, 4\]"):
        _model(visper_targets=("tiny-gen,layers=9",))
    ok = dataclasses.replace(tiny_config(), visper_targets=("nope",))
    ok.validate()  # other methods never read the VisPer targets


# ---------------------------------------------------------------- train.py
FAST = ["--synthetic-size", "24", "--batch-size", "4", "--method", "visper"]


def _rows(path):
    drop = ("samples_per_s", "tokens_per_s", "peak_mem_mb")
    return [{k: v for k, v in r.items() if k not in drop} for r in read_log(path)]


def test_killed_visper_run_resumes_identically(tmp_path, monkeypatch):
    import train
    monkeypatch.chdir(tmp_path)
    args = ["--stage", "align", *FAST, "--max-steps", "4", "--save-every", "2"]
    assert train.main([*args, "--output-dir", "full"]) == 0
    rows = _rows("full/log.jsonl")
    assert {"visper/gen/l3", "visper/depth/l1", "visper/seg/l2", "visper_loss"} <= rows[0].keys(), \
        "each term is logged by name"

    def crash(trainer, row):
        if row["step"] == 3:
            raise RuntimeError("simulated crash")
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.main([*args, "--output-dir", "crashed"], on_step=crash)
    assert train.main([*args, "--output-dir", "crashed", "--resume"]) == 0
    assert _rows("crashed/log.jsonl") == rows, "resume must replay every term exactly"
    assert train.main(["--stage", "finetune", "--init", "full", *FAST[:4], "--max-steps", "1",
                       "--output-dir", "s2"]) == 0
    assert json.loads(Path("s2/config.json").read_text())["model"]["method"] == "visper"


@pytest.mark.parametrize("flag, message", [
    (["--visper-target", "tiny-gen,color=red"], "argument --visper-target: target spec part 'color=red'"),
    (["--visper-weight", "-1"], "argument --visper-weight: must be a number >= 0"),
])
def test_bad_visper_flags_stop_at_start_up(flag, message, capsys):
    from minijarvis.training.cli import parse_args
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--method", "visper", *flag])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err
