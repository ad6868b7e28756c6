"""LLaVA data: templates, labels, images, bad records, truncation, batches (minijarvis/data/llava.py)."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from minijarvis.data.llava import IGNORE_INDEX, LlavaDataset, Skip, collate, encode_caption, encode_conversation, encode_prompt, format_skips, make_collate, read_llava_json, stop_token_ids, truncate_spliced
from minijarvis.data.images import expand2square, load_image, shortest_edge_size
from minijarvis.errors import BadRecord
from minijarvis.errors import InputError
from minijarvis.llm import build_tokenizer

MEAN = (0.48145466, 0.4578275, 0.40821073)  # CLIP's; pad colour int(m * 255) = (122, 116, 104)
PAD_RGB = torch.tensor([122, 116, 104]) / 255
RED = torch.tensor([1.0, 0.0, 0.0])
TWO_TURNS = [{"from": "human", "value": "<image>\nWhat colour is the cube?"},
             {"from": "gpt", "value": "The cube is red."},
             {"from": "human", "value": "Is it left of the ball?"},
             {"from": "gpt", "value": "Yes, it is."}]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


@pytest.fixture()
def folder(tmp_path):
    """An image folder with a good RGB image, odd modes, and a corrupt file."""
    Image.new("RGB", (32, 16), (255, 0, 0)).save(tmp_path / "red.png")
    Image.new("L", (16, 32), 200).save(tmp_path / "gray.png")
    Image.new("RGBA", (32, 16), (0, 255, 0, 0)).save(tmp_path / "clear.png")
    palette = Image.new("P", (32, 32), 0)
    palette.putpalette([255, 0, 0] * 256)
    palette.save(tmp_path / "palette.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    return tmp_path


def make_ds(records, folder, tok, stage="finetune", **kw):
    args = dict(stage=stage, image_size=16, image_mean=MEAN, max_length=64, num_visual=4)
    return LlavaDataset(records, folder, tok, **{**args, **kw})


def caption_record(rid, image="red.png", caption="A red cube."):
    return {"id": rid, "image": image, "conversations": [
        {"from": "human", "value": "<image>\nRender a clear and concise summary of the photo."},
        {"from": "gpt", "value": caption}]}


def outcome(ds, rid):
    """The reason a record was rejected (at construction or when loaded), or None."""
    for pid, reason in ds.problems:
        if pid == rid:
            return reason
    items = [ds[i] for i in range(len(ds))]
    return next((s.reason for s in items if isinstance(s, Skip) and s.id == rid), None)


# ---------------------------------------------------------------- templates and labels
def test_caption_labels_exactly_the_caption(tok):
    ids, labels = encode_caption(tok, "A red cube is above a blue cone.")
    assert ids[0] == tok.convert_tokens_to_ids("<image>") and labels[0] == IGNORE_INDEX
    assert labels[1:] == ids[1:], "every caption token must be labelled"
    assert tok.decode(ids[1:]) == "A red cube is above a blue cone."
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids, "release style has no BOS/EOS"


def test_caption_llava_style_adds_bos_and_labelled_newline(tok):
    ids, labels = encode_caption(tok, "A red cube.", plain_style="llava")
    assert ids[:2] == [tok.bos_token_id, tok.convert_tokens_to_ids("<image>")]
    assert labels[:2] == [IGNORE_INDEX] * 2 and labels[2:] == ids[2:]
    assert tok.decode(ids[2:]) == "A red cube.\n"


def test_conversation_labels_exactly_the_assistant_turns(tok):
    ids, labels = encode_conversation(tok, TWO_TURNS)
    runs, current = [], []
    for i, label in zip(ids, labels):
        if label != IGNORE_INDEX:
            assert label == i, "a label differs from its input id"
            current.append(i)
        elif current:
            runs, current = runs + [current], []
    assert [tok.decode(r) for r in runs] == ["The cube is red.<|end|>", "Yes, it is.<|end|>"]


def test_conversation_ids_equal_full_render_tokenization(tok):
    ids, _ = encode_conversation(tok, TWO_TURNS)
    messages = [{"role": {"human": "user", "gpt": "assistant"}[t["from"]], "content": t["value"]}
                for t in TWO_TURNS]
    full = tok.apply_chat_template(messages, tokenize=False)
    assert ids == tok(full, add_special_tokens=False)["input_ids"], "segment-wise ids differ"
    assert ids.count(tok.convert_tokens_to_ids("<image>")) == 1


def test_conversation_rejects_non_prefix_stable_template(tok):
    odd = build_tokenizer()
    odd.chat_template = ("{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
                         "{{ messages | length }}{% if add_generation_prompt %}>{% endif %}")
    with pytest.raises(ValueError, match="prefix-stable"):
        encode_conversation(odd, TWO_TURNS)


def test_prompt_ends_with_generation_header(tok):
    assert tok.decode(encode_prompt(tok, "What is it?")) == \
        "<|user|>\n<image>\nWhat is it?<|end|>\n<|assistant|>\n"
    text_only = encode_prompt(tok, "Hi", has_image=False)
    assert tok.convert_tokens_to_ids("<image>") not in text_only


def test_stop_ids_are_end_marker_then_eos(tok):
    assert stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|end|>"), tok.eos_token_id]


# ---------------------------------------------------------------- JSON
def test_read_json_normalises_int_and_str_ids(tmp_path):
    path = tmp_path / "d.json"
    path.write_text(json.dumps([{"id": 7, "conversations": []}, {"id": "000x", "conversations": []},
                                {"conversations": []}]))
    assert [r["id"] for r in read_llava_json(path)] == ["7", "000x", "#2"]


def test_read_json_invalid_file_names_file_and_position(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('[{"id": 1,\n  "conversations": [}]')
    with pytest.raises(InputError, match=r"broken\.json is not valid JSON.*line 2 column"):
        read_llava_json(path)


def test_read_json_rejects_non_list(tmp_path):
    path = tmp_path / "obj.json"
    path.write_text('{"id": 1}')
    with pytest.raises(InputError, match="obj.json must hold a JSON list"):
        read_llava_json(path)


def test_read_json_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_llava_json(tmp_path / "nope.json")


# ---------------------------------------------------------------- images
def test_expand2square_centres_wide_image_in_mean_colour():
    img = load_image(Image.new("RGB", (40, 20), (255, 0, 0)), 40, MEAN)  # side 40: no resampling
    assert img.shape == (3, 40, 40) and img.dtype == torch.float32
    assert torch.allclose(img[:, :10].mean((1, 2)), PAD_RGB), "top band is not the mean colour"
    assert torch.allclose(img[:, 30:].mean((1, 2)), PAD_RGB), "bottom band is not the mean colour"
    assert torch.allclose(img[:, 10:30].mean((1, 2)), RED), "image is not centred vertically"


def test_expand2square_centres_tall_image_horizontally():
    out = expand2square(Image.new("RGB", (2, 6), (255, 0, 0)), (0, 0, 255))
    assert out.size == (6, 6)
    assert [out.getpixel((x, 3)) for x in range(6)] == [(0, 0, 255)] * 2 + [(255, 0, 0)] * 2 + [(0, 0, 255)] * 2


def test_resize_aspect_has_no_padding():
    img = load_image(Image.new("RGB", (40, 20), (255, 0, 0)), 16, MEAN, aspect="resize")
    assert torch.allclose(img, RED[:, None, None].expand(3, 16, 16), atol=1 / 255)


# Tall, wide, square, odd and very thin sizes; 21 and 16 px inputs (odd and even crop offsets).
CROP_CASES = [((40, 20), 16), ((17, 53), 16), ((33, 33), 16), ((101, 7), 21), ((5, 9), 21),
              ((640, 480), 21), ((500, 375), 16), ((16, 16), 16)]


def _processor_steps(img: Image.Image, size: int) -> np.ndarray:
    """CLIPImageProcessor's documented steps, written out: short side -> size (long side
    int(size * long / short)), PIL bicubic on uint8, centre crop at ((h - size) // 2,
    (w - size) // 2), rescale by 1/255 in float64, cast to float32. [3, size, size]."""
    w, h = img.size
    if w <= h:
        new_w, new_h = size, int(size * h / w)
    else:
        new_w, new_h = int(size * w / h), size
    a = np.asarray(img.resize((new_w, new_h), resample=Image.Resampling.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    a = a[top:top + size, left:left + size]
    return (a.astype(np.float64) * (1 / 255)).astype(np.float32).transpose(2, 0, 1)


def _random_image(w, h, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("wh, size", CROP_CASES)
def test_crop_equals_the_clip_processor_steps(wh, size):
    img = _random_image(*wh)
    got = load_image(img, size, MEAN, aspect="crop")
    want = torch.from_numpy(_processor_steps(img, size))
    assert got.shape == (3, size, size) and got.dtype == torch.float32
    assert (got - want).abs().max() <= 1e-6, f"{wh} -> {size}: crop differs from the processor's steps"


@pytest.mark.parametrize("wh, size", CROP_CASES)
def test_crop_equals_transformers_pil_clip_processor(wh, size):
    # The release's transformers 4.x CLIPImageProcessor ran on PIL; in 5.x that backend is
    # CLIPImageProcessorPil (the default CLIPImageProcessor is torchvision's, a few levels off).
    transformers = pytest.importorskip("transformers")
    cls = getattr(transformers, "CLIPImageProcessorPil", None)
    if cls is None:
        pytest.skip("transformers without the PIL CLIP processor")
    processor = cls(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                    do_normalize=False)  # normalisation is each encoder's job
    img = _random_image(*wh, seed=1)
    want = torch.from_numpy(processor(img, return_tensors="np")["pixel_values"][0])
    assert torch.equal(load_image(img, size, MEAN, aspect="crop"), want), f"{wh} -> {size}"


@pytest.mark.parametrize("wh, size", CROP_CASES[:4])
def test_pad_equals_llava_expand2square_then_the_processor(wh, size):
    # LLaVA's stage 2: expand2square(img, tuple(int(m * 255) for m in mean)), then the processor.
    img = _random_image(*wh, seed=2)
    square = expand2square(img, tuple(int(m * 255) for m in MEAN))
    want = torch.from_numpy(_processor_steps(square, size))
    assert torch.equal(load_image(img, size, MEAN, aspect="pad"), want), f"{wh} -> {size}"


def test_shortest_edge_size_truncates_the_long_side():
    assert shortest_edge_size(17, 53, 16) == (16, 49), "16 * 53 / 17 = 49.88 truncates to 49"
    assert shortest_edge_size(53, 17, 16) == (49, 16)
    assert shortest_edge_size(500, 375, 336) == (448, 336) and shortest_edge_size(9, 9, 4) == (4, 4)


def test_crop_keeps_the_centre_and_drops_the_sides():
    img = Image.new("RGB", (60, 20), (255, 0, 0))
    img.paste((0, 255, 0), (20, 0, 40, 20))  # a green centre between red sides
    out = load_image(img, 20, MEAN, aspect="crop")  # no resampling: 20 is the short side
    assert torch.equal(out, torch.tensor([0.0, 1.0, 0.0])[:, None, None].expand(3, 20, 20)), \
        "a 60x20 image cropped to 20x20 must be exactly its green centre"


@pytest.mark.parametrize("name, content", [("gray.png", 200 / 255), ("clear.png", None),
                                           ("palette.png", RED)])
def test_odd_modes_convert_and_pad_with_mean(folder, name, content):
    img = load_image(folder / name, 32, MEAN)
    assert img.shape == (3, 32, 32) and 0 <= img.min() and img.max() <= 1
    if content is None:  # fully transparent: composited on the pad colour everywhere
        assert torch.allclose(img, PAD_RGB[:, None, None].expand(3, 32, 32), atol=1 / 255)
    else:
        assert torch.allclose(img[:, 16, 16], torch.as_tensor(content).expand(3).float(), atol=1 / 255)
    if name == "gray.png":  # 16 wide, 32 tall: pad columns on both sides
        assert torch.allclose(img[:, :, :8].mean((1, 2)), PAD_RGB, atol=1 / 255)


def test_sixteen_bit_grayscale_is_rescaled_not_clipped():
    img16 = Image.frombytes("I;16", (4, 4), np.full(16, 32768, dtype="<u2").tobytes())
    assert img16.convert("L").getpixel((0, 0)) == 255, "premise: PIL alone clips 16-bit to white"
    img = load_image(img16, 4, MEAN)
    assert torch.allclose(img, torch.full((3, 4, 4), 128 / 255), atol=1 / 255), "16-bit mid-grey"


def test_corrupt_and_missing_files_raise_bad_record(folder):
    with pytest.raises(BadRecord, match="r1.*cannot decode"):
        load_image(folder / "corrupt.png", 16, MEAN, record_id="r1")
    with pytest.raises(BadRecord, match="r2.*not found"):
        load_image(folder / "absent.png", 16, MEAN, record_id="r2")


# ---------------------------------------------------------------- dataset
def test_align_item_has_image_and_caption_labels(folder, tok):
    item = make_ds([caption_record("c1")], folder, tok, stage="align")[0]
    assert item["id"] == "c1" and item["image"].shape == (3, 16, 16)
    assert item["input_ids"].dtype == torch.long and item["labels"][0] == IGNORE_INDEX
    assert tok.decode(item["input_ids"][1:]) == "A red cube."


@pytest.mark.parametrize("stage, aspect, want", [("align", None, "crop"), ("finetune", None, "pad"),
                                                  ("align", "pad", "pad"), ("finetune", "crop", "crop")])
def test_dataset_fits_images_as_the_release_per_stage_unless_told(folder, tok, stage, aspect, want):
    ds = make_ds([caption_record("c1")], folder, tok, stage=stage, aspect=aspect)
    assert ds.aspect == want, f"stage {stage}, aspect {aspect}: expected {want}"
    expected = load_image(folder / "red.png", 16, MEAN, aspect=want)
    assert torch.equal(ds[0]["image"], expected), f"the {stage} item must be the {want} image"


def test_small_data_sets_keep_their_fitted_images_and_give_the_same_pixels(folder, tok, monkeypatch):
    """A data set whose images fit IMAGE_CACHE_BYTES decodes each file once (the toy world's runs
    see every record many times); the item is the same tensor either way, and a larger data set
    keeps nothing."""
    import minijarvis.data.llava as llava_data
    want = load_image(folder / "red.png", 16, MEAN, aspect="pad")
    ds = make_ds([caption_record("c1")], folder, tok, stage="finetune")
    first = ds[0]["image"]
    assert torch.equal(first, want) and set(ds._images) == {0} and ds._images[0].dtype == torch.uint8
    (folder / "red.png").unlink()  # a second read would fail: the item must come from memory
    assert torch.equal(ds[0]["image"], first)
    monkeypatch.setattr(llava_data, "IMAGE_CACHE_BYTES", 3 * 16 * 16 - 1)  # one image is over the budget
    Image.new("RGB", (32, 16), (255, 0, 0)).save(folder / "red.png")
    big = make_ds([caption_record("c1")], folder, tok, stage="finetune")
    assert big._images is None and torch.equal(big[0]["image"], first)


def test_text_only_row_has_no_image(folder, tok):
    record = {"id": 5, "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    item = make_ds([record], folder, tok)[0]
    assert item["image"] is None and item["id"] == "5"
    assert tok.convert_tokens_to_ids("<image>") not in item["input_ids"].tolist()


def test_missing_image_token_is_prepended_to_first_human_turn(folder, tok):
    record = {"id": "p", "image": "red.png", "conversations": [
        {"from": "human", "value": "What is it?"}, {"from": "gpt", "value": "A cube."}]}
    item = make_ds([record], folder, tok)[0]
    assert tok.decode(item["input_ids"]).startswith("<|user|>\n<image>\nWhat is it?")


def test_odd_mode_images_are_not_bad_records(folder, tok):
    records = [caption_record(n, image=f"{n}.png") for n in ("gray", "clear", "palette")]
    items = [make_ds(records, folder, tok, stage="align")[i] for i in range(3)]
    assert not any(isinstance(x, Skip) for x in items), f"odd modes were skipped: {items}"


BAD = {
    "missing": (caption_record("missing", image="absent.png"), "not found"),
    "corrupt": (caption_record("corrupt", image="corrupt.png"), "cannot decode"),
    "empty caption": (caption_record("empty", caption="  "), "empty caption"),
    "no conversations": ({"id": "noconv", "image": "red.png"}, "conversations"),
    "dotdot": (caption_record("dotdot", image="../x.png"), "escapes the image folder"),
    "absolute": (caption_record("abs", image="/etc/passwd"), "escapes the image folder"),
    "two images": (caption_record("two", caption="<image> twice <image>"), "one image per record"),
    "malformed turn": ({"id": "mal", "image": "red.png", "conversations": [{"from": "x"}]}, "malformed"),
}


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_record_is_skipped_with_reason(folder, tok, kind):
    record, why = BAD[kind]
    reason = outcome(make_ds([caption_record("ok"), record], folder, tok, stage="align"), record["id"])
    assert reason is not None and why in reason, f"{kind}: got reason {reason!r}"


@pytest.mark.parametrize("kind", list(BAD))
def test_bad_record_raises_when_strict(folder, tok, kind):
    record, why = BAD[kind]
    with pytest.raises(BadRecord, match=why) as info:
        ds = make_ds([record], folder, tok, stage="align", strict=True)
        ds[0]
    assert info.value.record_id == record["id"] and record["id"] in str(info.value)


def test_empty_assistant_text_is_skipped(folder, tok):
    record = {"id": "ea", "conversations": [{"from": "human", "value": "Q"}, {"from": "gpt", "value": ""}]}
    assert "empty assistant text" in outcome(make_ds([record], folder, tok), "ea")


def test_truncation_respects_spliced_length_and_keeps_image(folder, tok):
    long = caption_record("long", caption="A red cube is to the left of a blue sphere. " * 20)
    item = make_ds([long], folder, tok, stage="align", max_length=30, num_visual=9)[0]
    spliced = len(item["input_ids"]) - 1 + 9
    assert spliced == 30, f"spliced length {spliced} != max_length 30"
    assert item["input_ids"][0] == tok.convert_tokens_to_ids("<image>"), "image token was cut"


def test_truncation_refuses_to_cut_the_image():
    ids, labels = [5, 6, 7, 8, 9, 3, 10], [-100] * 6 + [10]  # spliced 7 - 1 + 4 = 10
    assert truncate_spliced(ids, labels, max_length=10, num_visual=4, image_id=3) == (ids, labels)
    with pytest.raises(ValueError, match="image placeholder"):  # image would end at slot 9 > 8
        truncate_spliced(ids, labels, max_length=8, num_visual=4, image_id=3)


def test_truncation_skips_when_no_label_is_left(folder, tok):
    record = {"id": "nl", "image": "red.png", "conversations": [
        {"from": "human", "value": "<image>\n" + "Describe the red cube. " * 20},
        {"from": "gpt", "value": "It is red."}]}
    assert "no supervised token" in outcome(make_ds([record], folder, tok, max_length=24), "nl")


# ---------------------------------------------------------------- batches
def test_collate_pads_flags_and_reports_skips(folder, tok):
    text_only = {"id": "t", "conversations": [{"from": "human", "value": "Hi there, how are you?"},
                                                {"from": "gpt", "value": "Fine."}]}
    ds = make_ds([caption_record("c"), text_only], folder, tok, stage="finetune")
    items = [ds[0], Skip("bad", "image file not found"), ds[1]]
    batch = collate(items, pad_id=tok.pad_token_id)
    lengths = [len(ds[0]["input_ids"]), len(ds[1]["input_ids"])]
    assert batch["input_ids"].shape == batch["labels"].shape == (2, max(lengths))
    assert batch["attention_mask"].dtype == torch.long and batch["attention_mask"].sum(1).tolist() == lengths
    short = lengths.index(min(lengths))
    assert (batch["input_ids"][short, min(lengths):] == tok.pad_token_id).all()
    assert (batch["labels"][short, min(lengths):] == IGNORE_INDEX).all()
    assert batch["has_image"].tolist() == [True, False] and batch["images"].shape == (2, 3, 16, 16)
    assert batch["images"][1].abs().sum() == 0, "text-only row must get a zero image"
    assert batch["skipped"] == [("bad", "image file not found")] and batch["ids"] == ["c", "t"]


def test_collate_all_skipped_returns_only_the_skips():
    assert collate([Skip("a", "r")], pad_id=0) == {"skipped": [("a", "r")]}


def test_make_collate_text_only_batch_gets_zero_images(tok):
    item = dict(input_ids=torch.tensor([5, 6]), labels=torch.tensor([5, 6]), image=None, id="t")
    batch = make_collate(tok.pad_token_id, image_size=8)([item])
    assert batch["images"].shape == (1, 3, 8, 8) and not batch["has_image"].any()


def test_format_skips_lists_ids_and_reasons():
    line = format_skips([("a", "x"), ("b", "y"), ("c", "z")], limit=2)
    assert line == "skipped 3 records: 'a' (x); 'b' (y); and 1 more"


def test_small_data_sets_tokenize_each_record_once_and_give_the_same_items(tok, folder, monkeypatch):
    import minijarvis.data.llava as L
    calls = []
    real = L.encode_caption
    monkeypatch.setattr(L, "encode_caption", lambda *a, **k: calls.append(1) or real(*a, **k))
    records = [caption_record("a"), caption_record("b", caption="A blue cone.")]
    ds = make_ds(records, folder, tok, stage="align")
    first = [ds[i] for i in range(2)]
    again = [ds[i] for i in range(2)]
    assert len(calls) == 2, "each record's text is tokenized once"
    for x, y in zip(first, again):
        assert torch.equal(x["input_ids"], y["input_ids"]) and torch.equal(x["labels"], y["labels"])
        assert torch.equal(x["image"], y["image"])
    assert first[0]["input_ids"].tolist() != first[1]["input_ids"].tolist()
    monkeypatch.setattr(L, "TOKEN_CACHE_RECORDS", 1)  # a large data set keeps nothing
    calls.clear()
    big = make_ds(records, folder, tok, stage="align")
    _ = [big[i] for i in (0, 1, 0, 1)]
    assert len(calls) == 4 and torch.equal(big[1]["input_ids"], first[1]["input_ids"])
