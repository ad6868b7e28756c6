"""Presets build the paper's real architectures offline; configs round-trip and reject bad values."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from minijarvis.llm import build_llm, resolve_attn
from minijarvis.config import (MaskConfig, ModelConfig, TrainConfig, default_jepa_layer,
                               load_config, preset, save_config)

# (preset, layers, hidden, layer j of DESIGN.md §2.5, billions of parameters, backend)
PAPER_LLMS = [("gemma2-2b", 26, 2304, 6, 2.6, "eager"), ("llama3.2-3b", 28, 3072, 7, 3.2, "sdpa"),
              ("vicuna-7b", 32, 4096, 8, 6.7, "sdpa"), ("ministral-8b", 36, 4096, 9, 8.0, "sdpa"),
              ("qwen2-7b", 28, 3584, 7, 7.6, "sdpa")]


@pytest.mark.parametrize("name,layers,hidden,j,billions,attn", PAPER_LLMS)
def test_each_paper_llm_builds_its_real_shape_offline(name, layers, hidden, j, billions, attn):
    cfg = preset(name)  # random weights: no download
    assert not cfg.llm_pretrained and cfg.llm_arch["model_type"]
    with torch.device("meta"):  # shapes only: building 8B parameters for real is not a test
        llm = build_llm(cfg)
    text = llm.config.get_text_config()
    assert (text.num_hidden_layers, text.hidden_size) == (layers, hidden)
    assert default_jepa_layer(layers, "jarvis") == j, f"{name}: j = num_layers // 4"
    count = sum(p.numel() for p in llm.parameters()) / 1e9
    assert abs(count - billions) / billions < 0.06, f"{name}: {count:.2f}B parameters"
    assert resolve_attn(cfg, cfg.llm_arch["model_type"]) == attn
    assert llm.config._attn_implementation == attn


def test_pretrained_presets_name_the_hub_models_and_paper_encoders():
    cfg = preset("gemma2-2b", pretrained=True)
    assert cfg.llm_name == "google/gemma-2-2b-it" and cfg.tokenizer == cfg.llm_name
    assert cfg.ctx_encoder == "vit_large_patch14_clip_quickgelu_336.openai"
    assert cfg.tgt_encoder == "vit_large_patch14_dinov2.lvd142m"


def test_configs_round_trip_through_json(tmp_path):
    model, mask = preset("tiny"), MaskConfig(mask_faithful=False)
    train = TrainConfig(stage="finetune", lr=2e-5)
    save_config(tmp_path / "c.json", model=model, mask=mask, train=train, stage="finetune")
    back = load_config(tmp_path / "c.json")
    assert back["model"] == model and back["mask"] == mask and back["train"] == train
    assert back["stage"] == "finetune"


@pytest.mark.parametrize("field,value,words", [
    ("method", "ijepa", "method must be one of"), ("jepa_lambda", 1.5, "jepa_lambda"),
    ("jepa_distance", "l2", "jepa_distance"), ("llm_arch", {}, "llm_arch"),
    ("jepa_layer", 0, "jepa_layer")])
def test_invalid_model_settings_say_what_is_allowed(field, value, words):
    with pytest.raises(ValueError, match=words):
        dataclasses.replace(preset("tiny", pretrained=False), **{field: value}).validate()


def test_invalid_train_settings_say_what_is_allowed():
    with pytest.raises(ValueError, match="stage must be one of"):
        TrainConfig(stage="pretrain").validate()
    with pytest.raises(ValueError, match="batch_size"):
        TrainConfig(batch_size=0).validate()


@pytest.mark.parametrize("text, why", [("{ nope", "not valid JSON"), ("[1, 2]", "not a minijarvis config"),
                                       ('{"model": {"no_such_field": 1}}', "unknown model config fields"),
                                       ('{"train": 3}', "must be a JSON object")])
def test_a_damaged_config_is_an_input_error_naming_the_file(tmp_path, text, why):
    from minijarvis.errors import InputError
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(InputError, match=f"config.json: .*{why}"):
        load_config(tmp_path / "config.json")


def test_a_checkpoint_names_the_toy_parts_relative_to_the_package(tmp_path, monkeypatch):
    """config.json stores the shipped toy parts by a tag, not an absolute path, so a checkpoint
    loads wherever the package is installed."""
    import json

    from minijarvis import config as C
    C.save_config(tmp_path / "config.json", model=C.preset("tiny"))
    saved = json.loads((tmp_path / "config.json").read_text())["model"]
    assert saved["llm_name"] == C.TOY_TAG + "/llm" and saved["ctx_weights"].startswith(C.TOY_TAG)
    assert str(C.TOY_ASSETS) not in json.dumps(saved)
    moved = tmp_path / "elsewhere" / "assets"
    monkeypatch.setattr(C, "TOY_ASSETS", moved)  # as if the package lived elsewhere
    loaded = C.load_config(tmp_path / "config.json")["model"]
    assert loaded.tgt_weights == str(moved / "expert.safetensors")
