"""The toy world's pretrained parts: they load as their configs say, each does its job far
better than its random twin, the tiny preset uses them from any directory, and the (small)
build runs and is reproducible."""
from __future__ import annotations

import functools
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from minijarvis.training import cli
from minijarvis.config import (ENCODERS, TOY_ASSETS, TOY_CAPTION_ENCODER, TOY_EXPERT, TOY_LLM, is_toy,
                               preset)
from minijarvis.encoders import VisionEncoder
from minijarvis.llm import build_tokenizer
from minijarvis.toyworld import parts as P
from minijarvis.toyworld.build import FILES, HELD_OUT, build
from minijarvis.evaluation.shapesbench import COUNT_CHOICES, bench_item
from minijarvis.toyworld.world import WORLD_SEED, caption_text, depth_grid, mc_exercise, scene_tensors, text_corpus

HELD = 1 << 31  # held-out indices, away from the build's training and measurement indices


@functools.lru_cache(maxsize=1)
def _held_scenes():
    return scene_tensors(48, seed=0, offset=HELD)


def _encoder(key, file, features):
    name, kwargs = ENCODERS[key]
    return VisionEncoder(name, weights=str(file) if file else "", layer=-1 if features == "last" else -2,
                         norm=features == "last", **kwargs)


def test_shipped_parts_load_strictly_with_the_tiny_architecture():
    for key, path in (("tiny-clip", TOY_CAPTION_ENCODER), ("tiny-dinov2", TOY_EXPERT)):
        vit = P.new_vit(key)
        assert vit.load_state_dict(load_file(str(path)), strict=True), f"{path} does not fit {key}"
    llm = AutoModelForCausalLM.from_pretrained(str(TOY_LLM))
    arch = preset("tiny", pretrained=False).llm_arch
    config = llm.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers, config.vocab_size) == (
        arch["model_type"], arch["hidden_size"], arch["num_hidden_layers"], arch["vocab_size"])
    meta = json.loads((TOY_ASSETS / FILES["meta"]).read_text())
    assert meta["encoders"]["caption_encoder"] == [ENCODERS["tiny-clip"][0], ENCODERS["tiny-clip"][1]]
    assert meta["encoders"]["expert"] == [ENCODERS["tiny-dinov2"][0], ENCODERS["tiny-dinov2"][1]]


def test_shipped_parts_stay_small():
    total = sum(f.stat().st_size for f in TOY_ASSETS.rglob("*") if f.is_file())
    assert total < 5e6, f"the toy parts weigh {total / 1e6:.1f} MB; keep the repository light"


def test_tiny_preset_uses_the_toy_parts_from_any_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = preset("tiny")
    assert is_toy(cfg) and cfg.llm_pretrained and TOY_LLM.is_dir()
    assert cfg.ctx_weights == str(TOY_CAPTION_ENCODER) and cfg.tgt_weights == str(TOY_EXPERT)
    rand = preset("tiny", pretrained=False)
    assert not is_toy(rand) and not rand.llm_pretrained and not rand.ctx_weights and not rand.tgt_weights


def test_random_init_flag_means_random_tiny_parts_and_tiny_keys_mean_toy_parts():
    toy, _ = cli.new_model_config(cli.parse_args([]))
    rand, _ = cli.new_model_config(cli.parse_args(["--random-init"]))
    assert is_toy(toy) and toy.ctx_weights and toy.tgt_weights
    assert not rand.llm_pretrained and rand.ctx_weights == rand.tgt_weights == ""
    swapped, _ = cli.new_model_config(cli.parse_args(["--target-encoder", "tiny-clip"]))
    assert swapped.tgt_weights == str(TOY_CAPTION_ENCODER)  # the caption encoder as target
    other, _ = cli.new_model_config(cli.parse_args(["--context-encoder", "vit_tiny_patch16_224"]))
    assert other.ctx_weights == ""  # the toy file fits only its own architecture


def test_exercises_state_their_answer_and_count_exercises_use_the_bench_choices():
    kinds = set()
    for i in range(60):
        prompt, letter = mc_exercise(i, WORLD_SEED)
        assert mc_exercise(i, WORLD_SEED) == (prompt, letter)  # deterministic
        question, *lines, instruction = prompt.split("\n")
        options = dict(line[1:].split(") ", 1) for line in lines)
        assert instruction.startswith("Answer with the option's letter") and letter in options
        if question.startswith("There are "):
            kinds.add("count")
            assert tuple(options.values()) == COUNT_CHOICES and question.split()[2] == options[letter]
        else:
            kinds.add("pick")
            assert len(options) == 2 and question.startswith(f"The {options[letter]} is ")
    assert kinds == {"count", "pick"}


def test_the_corpus_answers_every_multiple_choice_question_with_a_letter():
    tok = build_tokenizer()
    texts = text_corpus(tok, 0, 0, 2, seed=0, n_exercises=3)
    assert len(texts) == 2 * 4 + 3
    answers = [t.split("<|assistant|>\n", 1)[1].split("<|end|>", 1)[0] for t in texts]
    assert all(a in ("A", "B", "C", "D") for a in answers), answers
    item = bench_item("Depth", 0, WORLD_SEED, render_image=False)  # the first Depth question, by its letter
    assert answers[4] == "AB"[item["answer_index"]] and item["question"] in texts[4]


def test_toy_llm_answers_a_bench_prompt_with_a_letter():
    tok = build_tokenizer()
    toy = AutoModelForCausalLM.from_pretrained(str(TOY_LLM)).eval()
    letters = [tok.convert_tokens_to_ids(t) for t in "ABCD"]
    for task in ("Count", "Distance"):
        item = bench_item(task, 0, seed=0, render_image=False)
        text = tok.apply_chat_template([{"role": "user", "content": item["prompt"]}], tokenize=False,
                                       add_generation_prompt=True)
        with torch.no_grad():
            probs = toy(tok(text, return_tensors="pt")["input_ids"]).logits[0, -1].softmax(-1)
        assert probs[letters[:len(item["choices"])]].sum() > 0.9, f"{task}: next token is not a choice's letter"


def test_toy_llm_perplexity_on_held_out_text_is_far_below_its_random_twin():
    tok = build_tokenizer()
    rows = P.encode_texts(tok, text_corpus(tok, 16, 16, 2, seed=0, offset=HELD))
    toy = AutoModelForCausalLM.from_pretrained(str(TOY_LLM))
    torch.manual_seed(0)
    from minijarvis.llm import build_llm
    twin = build_llm(preset("tiny", pretrained=False))
    ppl, twin_ppl = P.perplexity(toy, rows, tok.pad_token_id), P.perplexity(twin, rows, tok.pad_token_id)
    assert ppl < 6 and twin_ppl > 500, f"toy LLM perplexity {ppl:.2f}, random twin {twin_ppl:.1f}"


def test_caption_encoder_retrieves_the_right_caption_among_eight():
    tok, data = build_tokenizer(), _held_scenes()
    heads_state = load_file(str(TOY_ASSETS / FILES["caption_heads"]))
    vit, heads = P.new_vit("tiny-clip"), P.CaptionHeads(len(tok), 64)
    vit.load_state_dict(load_file(str(TOY_CAPTION_ENCODER)))
    heads.load_state_dict(heads_state)
    torch.manual_seed(0)
    twin, twin_heads = P.new_vit("tiny-clip"), P.CaptionHeads(len(tok), 64)
    rows = P.encode_texts(tok, data["captions"])
    with torch.no_grad():
        top1 = P.retrieval_top1(heads.image(vit.eval(), data["images"]), heads.text(rows))
        twin_top1 = P.retrieval_top1(twin_heads.image(twin.eval(), data["images"]), twin_heads.text(rows))
    assert top1 >= 0.3 and twin_top1 <= 0.25, f"top-1 of 8: toy CLIP {top1:.2f}, random twin {twin_top1:.2f} (chance 0.125)"


def test_expert_features_predict_depth_better_than_random_and_caption_features():
    data = _held_scenes()
    depth = data["log_depth"].flatten(1)
    r2 = {label: P.depth_probe_r2(_encoder(key, file, feat)(data["images"]), depth) for label, key, file, feat in (
        ("expert", "tiny-dinov2", TOY_EXPERT, "last"), ("random", "tiny-dinov2", None, "last"),
        ("caption", "tiny-clip", TOY_CAPTION_ENCODER, "penultimate"))}
    assert r2["expert"] > 0.8 and r2["expert"] > r2["random"] + 0.2, r2
    assert r2["expert"] > r2["caption"], r2


def test_depth_grid_puts_near_objects_low_and_sky_far():
    from minijarvis.data.shapes import make_scene
    log_depth, occupied, share = depth_grid(make_scene([("cube", "red", 0.0, 3.0)]), 12)
    assert log_depth[0].min() == pytest.approx(torch.tensor(30.0).log().item(), abs=1e-5)  # sky row
    centre = occupied.argmax()
    assert occupied.max() == 1.0 and log_depth.flat[centre] == pytest.approx(float(torch.tensor(3.0).log()), abs=1e-5)
    assert log_depth[-1].max() < log_depth[6].min()  # the ground nears the camera downwards
    assert share.shape == (1, 144) and share[0] == pytest.approx(occupied.reshape(-1))  # one object: all of it


def test_share_gives_each_patch_to_the_nearest_object_and_phrases_name_them():
    from minijarvis.data.shapes import make_scene
    from minijarvis.toyworld.world import PHRASES
    scene = make_scene([("cube", "red", 0.0, 6.0), ("sphere", "blue", 0.1, 3.0)])  # the sphere hides the cube
    _, occupied, share = depth_grid(scene, 6)
    assert share.sum(0) == pytest.approx(occupied.reshape(-1), abs=1e-6)  # every covered pixel has one owner
    assert share[1].sum() > share[0].sum()  # the near sphere is bigger and in front
    data = scene_tensors(3, seed=0, offset=HELD)
    n = data["count"]
    assert data["share"].shape == (3, 5, 36) and data["phrase"].shape == (3, 5)
    for i in range(3):  # phrases for the scene's objects, -1 past them
        assert (data["phrase"][i, :n[i]] >= 0).all() and (data["phrase"][i, n[i]:] == -1).all()
    scene = caption_text(HELD, WORLD_SEED)[0]  # scene_tensors' first scene
    assert [PHRASES[k] for k in data["phrase"][0, :n[0]].tolist()] == [o.name for o in scene.objects]


def test_region_loss_is_low_when_pooled_tokens_name_their_objects():
    tokens = torch.zeros(1, 4, 3)
    tokens[0, :2, 0], tokens[0, 2:, 1] = 1.0, 1.0  # patches 0-1: object A's feature; 2-3: B's
    share = torch.tensor([[[1.0, 1.0, 0, 0], [0, 0, 1.0, 0.5], [0, 0, 0, 0]]])
    phrase = torch.tensor([[0, 1, -1]])  # the third slot holds no object
    pooled = P.pool_regions(tokens, share)
    assert pooled[0, 0].tolist() == [1, 0, 0] and pooled[0, 1].tolist() == [0, 1, 0] and pooled[0, 2].abs().sum() == 0
    right = P.region_loss(10 * pooled[..., :2], phrase)
    wrong = P.region_loss(10 * pooled[..., [1, 0]], phrase)
    assert right < 1e-3 < 5 < wrong


def test_fixed_position_codes_do_not_train_and_tell_columns_apart():
    vit = P.new_vit("tiny-clip")
    P.fix_position_codes(vit)
    assert not vit.pos_embed.requires_grad and vit.pos_embed[0, 0].abs().sum() == 0  # CLS slot
    codes = vit.pos_embed[0, 1:]
    assert torch.cdist(codes, codes).add(torch.eye(len(codes)) * 1e3).min() > 0.1  # 36 distinct codes


def test_expert_counts_objects_better_than_the_caption_encoder():
    data = scene_tensors(200, seed=0, offset=HELD + 1000)  # 100 to fit the probe, 100 to score it
    acc = {label: P.count_probe_acc(_encoder(key, file, feat)(data["images"]), data["count"]) for label, key, file, feat in (
        ("expert", "tiny-dinov2", TOY_EXPERT, "last"), ("caption", "tiny-clip", TOY_CAPTION_ENCODER, "penultimate"))}
    assert acc["expert"] > acc["caption"], acc


def test_small_build_runs_writes_every_file_and_is_reproducible(tmp_path):
    meta = build(tmp_path / "a", size="small", seed=3)
    build(tmp_path / "b", size="small", seed=3)
    for name in ("caption_encoder", "caption_heads", "expert", "expert_heads"):
        a, b = (load_file(str(tmp_path / d / FILES[name])) for d in "ab")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), f"{name} differs"
    a, b = (load_file(str(tmp_path / d / "llm" / "model.safetensors")) for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a), "the LLM differs between two seeded builds"
    assert meta["metrics"]["llm"]["held_out_perplexity"] < meta["metrics"]["llm"]["random_twin_perplexity"]
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "a" / "llm")).config.hidden_size == 64
    assert HELD_OUT < HELD


@pytest.mark.parametrize("argv", [["build", "--size", "huge"], ["build", "--seed", "-1"], ["train"]])
def test_build_cli_rejects_bad_values_with_a_usage_error(argv, capsys):
    from minijarvis.toyworld.__main__ import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2 and "error: argument" in capsys.readouterr().err


def test_rebuilding_only_the_encoders_keeps_the_llm_and_its_record(tmp_path):
    build(tmp_path, "small", seed=0)
    llm = {f.name: f.read_bytes() for f in (tmp_path / FILES["llm"]).iterdir()}
    first = json.loads((tmp_path / FILES["meta"]).read_text())
    meta = build(tmp_path, "small", seed=1, parts="encoders")
    assert {f.name: f.read_bytes() for f in (tmp_path / FILES["llm"]).iterdir()} == llm
    assert meta["metrics"]["llm"] == first["metrics"]["llm"]
    assert load_file(str(tmp_path / FILES["expert"])) is not None
    with pytest.raises(ValueError, match="build all parts first"):
        build(tmp_path / "empty", "small", parts="encoders")
