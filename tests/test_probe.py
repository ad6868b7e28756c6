"""probe.py + minijarvis.probes.core: probes recover a planted signal, one LLM forward per batch feeds
every layer, reruns repeat, outputs name every checkpoint, bad input fails before any work."""
from __future__ import annotations

import csv
import dataclasses
import json

import pytest
import torch

import probe as probepy
from minijarvis.probes import run as R
from minijarvis.probes import core as P
from minijarvis.errors import run_main
from minijarvis.model import JarvisModel
from minijarvis.visper import Resampler
from tests.conftest import SMALL_MASKS, tiny_config
from minijarvis.training.checkpoint import save_checkpoint


# ---------------------------------------------------------------- the core, on synthetic tensors
def planted(n=96, tokens=16, d_tgt=8, d_llm=24, seed=0, position=False):
    """Targets Y [n, M, D] (zero mean) and hidden states H [n, 2, T, d]: layer 0 holds Y through a
    fixed linear map (``position``: plus a code of each slot's place, as a ViT's position
    embedding gives; a resampler's queries need it to tell the slots apart), layer 1 noise only.
    The visual slots sit at positions 1..M of T = M + 2."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randn(n, tokens, d_tgt, generator=g)
    a, pos = torch.randn(d_tgt, d_llm, generator=g), torch.randn(tokens, d_llm, generator=g)
    hidden = torch.randn(n, 2, tokens + 2, d_llm, generator=g)
    hidden[:, 0, 1:tokens + 1] = y @ a + (pos if position else 0)
    return hidden, y, slice(1, tokens + 1)


@pytest.mark.parametrize("kind,steps,signal,noise", [("linear", 300, 0.95, 0.2), ("resampler", 300, 0.8, 0.3)])
def test_probe_recovers_a_planted_signal_and_not_noise(kind, steps, signal, noise):
    hidden, y, visual = planted(position=kind == "resampler")
    probes = P.make_probes(kind, 2, hidden.shape[-1], y.shape[-1], y.shape[1], seed=0, width=32)
    losses = P.train_probes(probes, kind, hidden[:64], y[:64], visual, steps, 16, seed=0, lr=3e-3)
    assert losses[-1] < losses[0]
    scores = P.score_probes(probes, kind, hidden[64:], y[64:], visual, batch_size=16)
    flat, token = scores["flat"].mean(1), scores["token"].mean(1)
    assert flat[0] > signal and token[0] > signal, f"{kind}: the planted layer scores {flat[0]:.3f}"
    assert abs(flat[1]) < noise and abs(token[1]) < noise, f"{kind}: the noise layer scores {flat[1]:.3f}"


def test_resampler_probes_are_visper_predictors_with_their_own_queries():
    probes = P.make_probes("resampler", 3, 24, 8, 5, seed=0, width=32)
    h = torch.randn(3, 4, 7, 24)
    out = probes(h)
    assert out.shape == (3, 4, 5, 8) and probes.queries.shape == (3, 5, 24), "queries live in d_llm"
    for p in range(3):  # probe p = visper.Resampler with the p-th weights, fed its own queries
        net = Resampler(24, 32, 8)
        net.load_state_dict({n.replace("/", "."): w[p] for n, w in probes.stacked.items()})
        shared = net(h[p], probes.queries[p][None])
        assert torch.allclose(out[p], shared, atol=1e-5), f"probe {p} differs from visper.Resampler"
        per_image = net(h[p], probes.queries[p][None].expand(4, -1, -1))  # the predictor's own path
        assert torch.allclose(shared, per_image, atol=1e-5)
    same, other = (P.make_probes("resampler", 3, 24, 8, 5, seed=s, width=32) for s in (0, 1))
    assert torch.equal(same(h), out) and not torch.allclose(other(h), out), "init depends on the seed only"


def test_cosine_scores_flat_and_per_token():
    y = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # one image, two tokens
    s = P.cosine_scores(torch.stack([y, -y]), y)
    assert torch.allclose(s["flat"], torch.tensor([[1.0], [-1.0]]))
    pred = torch.tensor([[[1.0, 0.0], [0.0, -2.0]]])  # token 1 right, token 2 reversed
    s = P.cosine_scores(pred, y)
    assert s["token"].item() == pytest.approx(0.0)  # mean of +1 and -1
    assert s["flat"].item() == pytest.approx((1 - 4) / 5)  # the larger token weighs more


def test_the_centred_score_counts_only_what_differs_from_the_mean_target():
    torch.manual_seed(0)
    mean = 5 * torch.randn(1, 4, 3)  # a large common part, as the toy expert's patch positions
    y = mean + torch.randn(6, 4, 3)
    s = P.cosine_scores(torch.stack([mean.expand_as(y), mean + 0.5 * (y - mean)]), y, mean)
    assert torch.all(s["flat"][0] > 0.8)  # the mean predictor scores high on the flat cosine...
    assert torch.allclose(s["centred"][0], torch.zeros(6))  # ...and 0 once the mean is removed
    assert torch.allclose(s["centred"][1], torch.ones(6), atol=1e-6)  # the image's own part, scaled
    assert "centred" not in P.cosine_scores(y, y)  # only given the mean
    assert torch.allclose(P.baseline_scores(y[:3], y[3:])["centred"], torch.zeros(3))


def test_mean_predictor_baseline():
    common = torch.randn(1, 4, 3)
    assert torch.allclose(P.baseline_scores(common.expand(5, -1, -1), common.expand(3, -1, -1))["flat"],
                          torch.ones(3))
    y = torch.randn(400, 4, 3)
    assert P.baseline_scores(y[:300], y[300:])["flat"].mean().abs() < 0.3


def test_bootstrap_is_seeded_and_brackets_the_mean():
    scores = torch.rand(3, 50, generator=torch.Generator().manual_seed(0))
    mean, lo, hi = P.bootstrap(scores, 500, seed=1)
    assert torch.allclose(mean, scores.double().mean(1))
    assert (lo < mean).all() and (mean < hi).all()
    again = P.bootstrap(scores, 500, seed=1)
    assert torch.equal(lo, again[1]) and torch.equal(hi, again[2])
    _, lo_c, hi_c = P.bootstrap(torch.full((1, 20), 0.5), 100)
    assert lo_c.item() == hi_c.item() == pytest.approx(0.5)


# ---------------------------------------------------------------- one forward, every layer
@pytest.fixture(scope="module")
def tiny_model():
    return JarvisModel(tiny_config(layers=3), SMALL_MASKS).eval()


def test_one_llm_forward_per_batch_feeds_every_layer(tiny_model):
    model, calls = tiny_model, []
    hook = model.llm.model.register_forward_hook(lambda *a: calls.append(1))
    images = torch.rand(5, 3, model.image_size, model.image_size)
    ids = R.prompt_ids(model, "align", "release")
    try:
        hidden, visual = P.collect_hidden_states(model, images, ids, [0, 1, 2, 3], batch_size=2)
    finally:
        hook.remove()
    assert len(calls) == 3, "5 images in batches of 2: three LLM forwards for all four layers"
    assert hidden.shape == (5, 4, model.num_visual, 64) and hidden.dtype == torch.bfloat16
    assert visual == slice(0, model.num_visual)
    # The hooks give HF's hidden_states (layer 0 = input embeddings; the last HF entry is normed).
    x = model.prepare_inputs(dict(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, 1, dtype=torch.long),
                                  labels=torch.full((1, 1), -100), images=images[4:5]))
    with torch.no_grad():
        ref = model.llm.model(inputs_embeds=x["embeds"], attention_mask=x["mask"], output_hidden_states=True)
    for layer in (0, 1, 2):
        assert torch.allclose(hidden[4, layer].float(), ref.hidden_states[layer][0], rtol=2e-2, atol=2e-2)


def test_prompt_follows_the_training_layout(tiny_model):
    model = tiny_model
    assert R.prompt_ids(model, "align", "release") == [model.image_token_id]
    llava = R.prompt_ids(model, "align", "llava")
    assert llava == [model.tokenizer.bos_token_id, model.image_token_id]
    chat = R.prompt_ids(model, "finetune", "release")
    assert chat.count(model.image_token_id) == 1 and len(chat) > 3


def test_method_layers(tiny_model):
    cfg = dataclasses.replace(tiny_model.cfg)
    assert R.method_layers(tiny_model) == [tiny_model.jepa_layer]
    llava = JarvisModel(dataclasses.replace(cfg, method="llava"))
    assert R.method_layers(llava) == []


# ---------------------------------------------------------------- the CLI on tiny checkpoints
@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    for method in ("llava", "jarvis"):
        save_checkpoint(JarvisModel(tiny_config(method=method), SMALL_MASKS), root / f"tiny-{method}")
    return [str(root / "tiny-llava"), str(root / "tiny-jarvis")]


def _run(checkpoints, out, *extra):
    return probepy.main(["--checkpoint", *checkpoints, "--target", "tiny-dinov2", "--limit", "12",
                         "--steps", "4", "--batch-size", "4", "--bootstrap", "50", "--output-dir", str(out), *extra])


def test_outputs_exist_and_name_every_checkpoint(checkpoints, tmp_path):
    result = _run(checkpoints, tmp_path)
    rows = list(csv.DictReader(open(tmp_path / "probe.csv")))
    assert {r["checkpoint"] for r in rows} == {"tiny-llava", "tiny-jarvis"}
    # 3 layers (0..2) x 3 metrics (flat, token, centred) per checkpoint, plus baseline rows
    assert sum(r["probe"] == "linear" for r in rows) == 2 * 3 * 3
    assert all(float(r["lo"]) <= float(r["mean"]) <= float(r["hi"]) for r in rows)
    saved = json.loads((tmp_path / "probe.json").read_text())
    assert [c["label"] for c in saved["checkpoints"]] == ["tiny-llava", "tiny-jarvis"]
    assert saved["checkpoints"][1]["method_layers"] == [1] and result["settings"]["n_test"] == 4
    assert (tmp_path / "probe.png").stat().st_size > 10_000


def test_rerun_with_the_same_seed_gives_the_same_scores(checkpoints, tmp_path):
    _run(checkpoints[:1], tmp_path / "a", "--probe", "resampler", "--layers", "0,2")
    _run(checkpoints[:1], tmp_path / "b", "--probe", "resampler", "--layers", "0,2")
    assert (tmp_path / "a" / "probe.csv").read_text() == (tmp_path / "b" / "probe.csv").read_text()


def test_pooled_target_and_stage2_checkpoint(tmp_path):
    save_checkpoint(JarvisModel(tiny_config(method="llava"), stage="finetune"), tmp_path / "s2")
    for kind in ("linear", "resampler"):
        out = probepy.main(["--checkpoint", str(tmp_path / "s2"), "--target", "tiny-gen", "--limit", "8",
                            "--steps", "2", "--layers", "2", "--probe", kind, "--output-dir", str(tmp_path / kind)])
        rows = out["checkpoints"][0]["rows"]
        assert [r["layer"] for r in rows] == [2, 2, 2] and all(-1 <= r["mean"] <= 1 for r in rows)


@pytest.mark.parametrize("family", ["qwen2", "gemma2", "mistral", "local-dir"])
def test_every_llm_family(family, tmp_path):
    if family == "local-dir":  # a user's own HF causal LM directory
        source = JarvisModel(tiny_config(), SMALL_MASKS)
        source.llm.save_pretrained(tmp_path / "llm")
        source.tokenizer.save_pretrained(tmp_path / "llm")
        cfg = tiny_config(llm_name=str(tmp_path / "llm"), llm_pretrained=True, llm_arch={},
                          tokenizer=str(tmp_path / "llm"))
    else:
        cfg = tiny_config(family)
    save_checkpoint(JarvisModel(cfg, SMALL_MASKS), tmp_path / "ckpt")
    out = probepy.main(["--checkpoint", str(tmp_path / "ckpt"), "--target", "tiny-dinov2", "--limit", "6",
                        "--steps", "2", "--output-dir", str(tmp_path / "out")])
    layers = sorted({r["layer"] for r in out["checkpoints"][0]["rows"]})
    assert layers == [0, 1, 2]


# ---------------------------------------------------------------- bad input: one line, no work
@pytest.mark.parametrize("case,code,message", [
    ("not-a-checkpoint", 1, "not a minijarvis checkpoint"),
    ("unknown-target", 2, "--target: unknown target preset 'no-such-encoder'"),
    ("layer-out-of-range", 2, "--layers 9 is out of range"),
    ("bad-layers", 2, "--layers must be 'all' or a comma list"),
    ("bad-fraction", 2, "argument --test-fraction: must be a number in (0, 1)"),
    ("missing-images", 1, "no-such-folder"),
    ("no-cuda", 2, "--device cuda: no CUDA device"),
])
def test_bad_input_fails_before_any_work(case, code, message, checkpoints, tmp_path, capsys, monkeypatch):
    if case == "no-cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the input was checked")
    monkeypatch.setattr(R, "load_checkpoint", no_work)
    monkeypatch.setattr(R, "probe_images", no_work)
    argv = ["--checkpoint", checkpoints[0], "--target", "tiny-dinov2", "--output-dir", str(tmp_path)]
    if case == "not-a-checkpoint":
        (tmp_path / "empty").mkdir()
        argv[1] = str(tmp_path / "empty")
    extra = {"unknown-target": ["--target", "no-such-encoder"], "layer-out-of-range": ["--layers", "0,9"],
             "bad-layers": ["--layers", "two"], "bad-fraction": ["--test-fraction", "1.5"],
             "missing-images": ["--images", str(tmp_path / "no-such-folder")],
             "no-cuda": ["--device", "cuda"]}.get(case, [])
    argv += extra
    if code == 2 and case == "bad-fraction":
        with pytest.raises(SystemExit) as e:
            probepy.main(argv)
        assert e.value.code == 2
    else:
        assert run_main(probepy.main, "probe.py", argv) == code
    err = capsys.readouterr().err.strip()
    if case == "bad-fraction":  # argparse: its usage lines, then one line naming the flag
        err = err.splitlines()[-1]
    assert message in err and len(err.splitlines()) == 1, err
