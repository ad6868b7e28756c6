"""bench.py and minijarvis.bench.steps: the helpers' arithmetic, the method views, the synthetic
batch, and one tiny end-to-end run (JSON + table). Timing targets are never asserted here:
figures come from the script, not from a timed test."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench.py lives at the repo root
import bench  # noqa: E402
from minijarvis.bench import steps as bench_utils  # noqa: E402
from minijarvis.errors import UsageError  # noqa: E402
from minijarvis.bench.steps import (METHODS, instrumented, make_optimizer, method_view, mfu,  # noqa: E402
                                    peak_flops, prime_optimizer, synthetic_batch, train_flops, train_step)
from minijarvis.bench.measure import (LiveBytes, PartTimer, interleaved, is_oom, largest_fitting, median,  # noqa: E402
                                tensor_bytes)


@pytest.fixture(autouse=True)
def keep_thread_count():
    """bench.settle sets torch's thread count (tiny on CPU: 1); give the next test file its own."""
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny():
    threads = str(torch.get_num_threads())  # settle would set 1 for tiny on CPU, for every later test
    args = bench.parse_args(["--preset", "tiny", "--batch-size", "2", "--caption-len", "8", "--threads", threads])
    device = bench.settle(args)
    return bench.build_model(args, device), args, device


def test_keep_dropped_slots_reaches_the_model(tiny):
    model, args, device = tiny
    assert model.cfg.skip_dropped, "default: masked steps skip the dropped slots"
    keep = bench.parse_args(["--keep-dropped-slots", "--threads", str(torch.get_num_threads())])
    assert not bench.build_model(keep, bench.settle(keep)).cfg.skip_dropped


def test_median_of_odd_and_even_counts_and_empty_is_an_error():
    assert median([3.0, 1.0, 2.0]) == 2.0, "odd count: the middle value"
    assert median([4.0, 1.0, 2.0, 3.0]) == 2.5, "even count: mean of the two middle values"
    with pytest.raises(ValueError, match="at least one step"):
        median([])


def test_train_flops_is_six_per_parameter_token_when_the_llm_trains_four_when_frozen():
    assert train_flops(10, 100, llm_trains=True) == 6000, "stage 2: 6 N T"
    assert train_flops(10, 100, llm_trains=False) == 4000, "stage 1: no weight gradients, 4 N T"
    assert train_flops(10, 100, n_head=5, supervised=7, llm_trains=True) == 6 * (1000 + 35), \
        "the LM head counts only at the supervised positions"
    with pytest.raises(ValueError):
        train_flops(-1, 100)


def test_mfu_is_achieved_flops_over_peak_and_none_without_a_peak():
    assert mfu(2e12, 2.0, 4e12) == pytest.approx(0.25)
    assert mfu(1.0, 1.0, None) is None


def test_peak_flops_prefers_the_specific_gpu_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 989e12, "H100 SXM"
    assert peak_flops("NVIDIA H100 PCIe") == 756e12, "PCIe must not match the SXM entry"
    assert peak_flops("NVIDIA H200") == 989e12
    assert peak_flops("Some Unknown GPU") is None


def test_tensor_bytes_counts_a_shared_storage_once():
    a = torch.zeros(1000)  # 4000 bytes
    assert tensor_bytes([a, a[10:], a.view(10, 100), None, 3]) == 4000, "views share one storage"
    assert tensor_bytes([a, torch.zeros(10, dtype=torch.bfloat16)]) == 4020


def test_live_bytes_tracks_peak_and_frees():
    before = torch.ones(1000)
    with LiveBytes() as lb:
        before.mul_(2)  # in place on a tensor made outside: nothing new
        view = before[:10]  # a view: nothing new
        x = torch.ones(1000)  # 4000 bytes
        y = x * 2  # 4000 more
        del y
        x.add_(1)
    assert lb.peak == 8000, f"peak must be x and y alive at once, got {lb.peak}"
    assert lb.live == 4000, f"only x must still be alive, got {lb.live}"
    assert view.untyped_storage().data_ptr() == before.untyped_storage().data_ptr()


def test_memory_part_records_its_own_peak_only_inside_a_cpu_memory_round():
    timer = PartTimer(torch.device("cpu"))

    def work():
        a = torch.ones(1000)  # 4000 bytes
        return (a * 2).sum()  # 4000 more, and the 4-byte sum while both live
    wrapped = timer.wrap(work, "part", memory=True)
    wrapped()
    assert timer.peaks == {}, "no memory round, no tracking (and no slow-down)"
    with LiveBytes() as round_:
        big = torch.ones(5000)  # 20000 bytes before the part: not the part's own
        wrapped()
    assert timer.peaks == {"part": 8004}, "the part's own peak, not the round's"
    assert round_.peak >= 20000 + 8004, "the round's tracker still sees the part's tensors"
    assert set(timer.collect()) == {"part"} and big.numel() == 5000


def test_largest_fitting_doubles_until_the_first_failure():
    tried = []

    def fits(b):
        tried.append(b)
        return b <= 12
    assert largest_fitting(fits, 256) == 8 and tried == [1, 2, 4, 8, 16], "stop at the first failure"
    assert largest_fitting(lambda b: True, 20) == 16, "never above the limit"
    assert largest_fitting(lambda b: False, 256) == 0, "0 when even batch 1 fails"


def test_fits_turns_out_of_memory_into_false_and_frees_the_gradients(tiny, monkeypatch):
    model, args, device = tiny
    opt = make_optimizer(model, device)

    def step(model, opt, batch, method, g, bf16):
        model.proj[0].weight.grad = torch.ones_like(model.proj[0].weight)  # a half-done step
        if batch["input_ids"].shape[0] > 4:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return 0.0
    monkeypatch.setattr(bench, "train_step", step)
    sizes = lambda b: bench.fits(model, opt, synthetic_batch(model, b, "finetune", chat_len=24), args, device)  # noqa: E731
    assert largest_fitting(sizes, 64) == 4
    assert model.proj[0].weight.grad is None, "an out-of-memory step must leave no gradients behind"
    assert is_oom(RuntimeError("CUDA error: out of memory")) and not is_oom(RuntimeError("shape mismatch"))
    monkeypatch.setattr(bench, "train_step", lambda *a: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        sizes(1)


def test_method_views_run_the_intended_forward(tiny):
    model, args, device = tiny
    calls = []
    hook = model.target_encoder.register_forward_hook(lambda *a: calls.append(1))
    batch = synthetic_batch(model, 2, "align", caption_len=8)
    g = torch.Generator().manual_seed(0)
    try:
        outs = {}
        for m in METHODS:
            before = len(calls)
            with method_view(model, m) as run_jepa:
                outs[m] = model(batch, g, run_jepa=run_jepa)
            outs[m]["tgt_calls"] = len(calls) - before
    finally:
        hook.remove()
    assert outs["llava"]["tgt_calls"] == 0 and outs["llava"]["jepa_loss"] is None, \
        "the llava view must run no target encoder and no auxiliary loss"
    assert outs["jarvis"]["jepa_ran"] and outs["jarvis"]["tgt_calls"] == 1, "the jarvis view runs JEPA every step"
    assert outs["nomask"]["align_loss"] is not None and not outs["nomask"]["jepa_ran"], "nomask aligns, unmasked"
    assert outs["visper"]["tgt_calls"] == 0 and outs["visper"]["visper_loss"] > 0, "visper: its own targets"
    assert not any(k.startswith("visper") for m in ("llava", "jarvis", "nomask") for k in outs[m]), \
        "VisPer-LM's parts sit out the other views"
    assert model.cfg.method == "jarvis" and model.bidirectional_visual, "a view must restore the model"
    assert model.task_tokens is not None and model.num_slots == model.num_visual + 24
    with method_view(model, "visper_tokens") as run_jepa:  # visper's sequence, NTP alone
        assert model.visper is None and model.num_slots == model.num_visual + 24
        out = model(batch, g, run_jepa=run_jepa)
    assert "visper_loss" not in out and torch.allclose(out["loss"], out["ntp_loss"])
    assert model.visper is not None, "the head is back after the view"


def test_part_timer_sums_named_parts_and_collect_resets():
    timer = PartTimer(torch.device("cpu"))
    for _ in range(2):
        with timer.part("a"):
            sum(range(20000))
    assert timer.wrap(lambda x: x + 1, "b")(1) == 2, "a wrapped call returns what the call returns"
    got = timer.collect()
    assert set(got) == {"a", "b"} and got["a"] > 0 and got["b"] >= 0
    assert timer.collect() == {}, "collect starts a new step"


def test_instrumented_times_the_jarvis_parts_inside_the_step_and_restores_the_model(tiny):
    model, args, device = tiny
    opt, timer = make_optimizer(model, device), PartTimer(device)
    batch, g = synthetic_batch(model, 2, "align", caption_len=8), torch.Generator().manual_seed(0)
    sampler, parts = model.sampler, {}
    for method in ("jarvis", "llava"):
        with instrumented(model, timer):
            train_step(model, opt, batch, method, g, False, timer)
        parts[method] = timer.collect()
    assert set(parts["jarvis"]) == {"target_encoder", "mask_sampling", "mask_building", "llm_forward", "backward"}
    assert all(v > 0 for v in parts["jarvis"].values())
    assert "target_encoder" not in parts["llava"] and "mask_sampling" not in parts["llava"], \
        "the llava step runs no F_tgt and draws no masks"
    with instrumented(model, timer):
        train_step(model, opt, batch, "visper", g, False, timer)
    parts["visper"] = timer.collect()
    assert {"visper_targets", "visper_predictors_fwd"} <= set(parts["visper"])
    assert "visper_targets" not in parts["llava"], "the llava step runs no VisPer-LM target"
    loss = bench_utils.predictors_fwd_bwd(model, timer.captured)["loss"]
    assert loss > 0 and all(p.grad is None for p in model.parameters()), "alone, then no gradient left"
    assert not {"encode_batch", "losses"} & set(model.visper.__dict__), "the visper head is restored"
    assert model.sampler is sampler and not {"_attention_mask", "_kept_positions"} & set(model.__dict__)
    assert "forward" not in model.llm.model.__dict__ and "forward" not in model.target_encoder.__dict__


def test_prime_optimizer_creates_the_state_without_moving_a_weight(tiny):
    model, args, device = tiny
    opt = make_optimizer(model, device)
    params = [p for group in opt.param_groups for p in group["params"]]
    before = [p.detach().clone() for p in params]
    prime_optimizer(opt)
    assert all(set(opt.state[p]) >= {"exp_avg", "exp_avg_sq"} for p in params), "AdamW state exists"
    assert all(torch.equal(p, b) for p, b in zip(params, before)), "no weight moved"
    assert all(p.grad is None for p in params) and opt.param_groups[0]["lr"] == 1e-5


def test_interleaved_measures_cpu_memory_in_the_first_warmup_round_only():
    calls = []

    def fn():
        calls.append(1)
        return torch.ones(1000).sum()  # a 4000-byte temporary
    times, peaks, outs = interleaved({"f": fn}, steps=3, warmup=1, device=torch.device("cpu"))
    assert len(calls) == 4 and len(times["f"]) == 3 and len(outs["f"]) == 3, "warm-up rounds are not kept"
    assert peaks["f"] >= 4000, "the warm-up round saw the temporary"
    with pytest.raises(ValueError, match="warmup >= 1"):
        interleaved({"f": fn}, steps=1, warmup=0, device=torch.device("cpu"))


def test_cpu_defaults_keep_a_real_shape_run_to_its_steps():
    before = torch.get_num_threads()
    args = bench.parse_args(["--preset", "gemma2-2b", "--device", "cpu", "--threads", str(before)])
    bench.settle(args)
    assert (args.batch_size, args.steps, args.warmup, args.methods, args.stage2) == (1, 3, 2, ("llava", "jarvis"), False)
    args = bench.parse_args(["--device", "cpu", "--threads", str(before)])
    bench.settle(args)
    assert (args.batch_size, args.steps, args.warmup, args.methods, args.stage2) == (8, 30, 1, METHODS, True), "tiny: all of it"
    with pytest.raises(UsageError, match="warmup"):
        bench.settle(bench.parse_args(["--device", "cpu", "--warmup", "0", "--threads", str(before)]))
    with pytest.raises(SystemExit):
        bench.parse_args(["--steps", "0"])


def test_fast_random_init_keeps_each_initialisers_scale_and_restores_them():
    import transformers.initialization as hf_init
    from transformers import AutoConfig, AutoModelForCausalLM
    originals = torch.nn.init.normal_, torch.nn.init.kaiming_uniform_, dict(hf_init.TORCH_INIT_FUNCTIONS)
    config = AutoConfig.for_model("llama", vocab_size=512, hidden_size=256, intermediate_size=512,
                                  num_hidden_layers=1, num_attention_heads=4)
    with bench_utils.fast_random_init(seed=0):
        llm = AutoModelForCausalLM.from_config(config)
        linear = torch.nn.Linear(300, 200)
    w = llm.model.layers[0].mlp.gate_proj.weight
    assert abs(float(w.detach().std()) - config.initializer_range) < 1e-3, "HF's normal_(std=0.02)"
    bound = 1 / 300 ** 0.5  # torch's default Linear init: kaiming_uniform_(a=sqrt(5)) -> U(-1/sqrt(fan_in), ...)
    top = float(linear.weight.detach().abs().max())
    assert 0.9 * bound < top <= bound
    assert torch.equal(llm.model.norm.weight, torch.ones(256)), "ones_ is not replaced"
    assert (torch.nn.init.normal_, torch.nn.init.kaiming_uniform_, hf_init.TORCH_INIT_FUNCTIONS) == \
        (originals[0], originals[1], originals[2]), "everything restored on exit"


def test_check_targets_pairs_rounds_and_takes_medians():
    from minijarvis.bench.report import check_targets
    s1 = dict(methods=dict(llava=dict(step_ms=100.0, peak_mib=100.0), jarvis=dict(step_ms=112.0, peak_mib=106.0)),
              breakdown_ms=dict(target_encoder=10.0, mask_sampling=0.5, mask_building=1.0),
              breakdown_steps_ms=dict(mask_sampling=[0.5, 0.5, 3.0], mask_building=[1.0, 1.2, 1.0]),
              target_encoder_mib=dict(weights=1.0, activations=1.0),
              extra_ms=[2.0, 2.9, 9.0])  # budget 3 ms: the median 2.9 passes, one noisy round does not matter
    got = {t["name"]: t["passed"] for t in check_targets(s1)}
    assert got == {"step time": True, "masks": True, "memory": True}
    s1["extra_ms"] = [3.1, 3.2, 0.0]
    s1["breakdown_steps_ms"]["mask_sampling"] = [2.0, 2.0, 0.5]  # medians 3.0 and 3.2 ms > 2.24 ms
    s1["methods"]["jarvis"]["peak_mib"] = 108.0  # > 1.05 x 100 + 2
    got = {t["name"]: t["passed"] for t in check_targets(s1)}
    assert got == {"step time": False, "masks": False, "memory": False}
    assert check_targets(dict(methods=dict(llava={}))) == [], "no targets without both llava and jarvis"


def test_check_visper_pairs_rounds_against_five_percent_of_llava():
    from minijarvis.bench.report import check_targets
    s1 = dict(methods=dict(llava=dict(step_ms=100.0), visper=dict(step_ms=150.0)),
              visper_breakdown_ms=dict(target_encoders=20.0, predictors_fwd=10.0, predictors_fwd_bwd=25.0),
              visper_extra_ms=[4.0, 4.9, 30.0])  # budget 5 ms: the median 4.9 passes
    assert [(t["name"], t["passed"]) for t in check_targets(s1)] == [("visper step time", True)]
    s1["visper_extra_ms"] = [5.1, 6.0, 0.0]
    assert [(t["name"], t["passed"]) for t in check_targets(s1)] == [("visper step time", False)]
    # the second row: against llava at visper's length (the task tokens' share of the LLM counted)
    s1.update(visper_extra_tokens_ms=[1.0, 2.0, 9.0])
    s1["visper_breakdown_ms"]["task_tokens_llm"] = 4.0
    got = check_targets(s1)
    assert [(t["name"], t["passed"]) for t in got] == [("visper step time", False),
                                                      ("visper step time, task tokens counted", True)]
    assert "task tokens in the LLM 4.0" in got[1]["text"]


def test_synthetic_batch_follows_the_collate_contract(tiny):
    model, args, device = tiny
    for stage, image_at in (("align", 0), ("finetune", 8)):
        b = synthetic_batch(model, 6, stage, caption_len=8, chat_len=24, seed=1)
        ids, att, lab = b["input_ids"], b["attention_mask"], b["labels"]
        assert ((ids == model.image_token_id).sum(1) == 1).all(), "one <image> per row"
        assert (ids[:, image_at] == model.image_token_id).all(), f"{stage}: image at {image_at}"
        assert (att.diff(dim=1) <= 0).all(), "right padding only"
        assert (lab[att == 0] == -100).all() and (lab[:, :image_at + 1] == -100).all(), \
            "no labels on padding, the prompt or the image"
        assert (lab != -100).any(1).all(), "every row supervises some tokens"
        assert len(set(att.sum(1).tolist())) > 1, "row lengths vary (padding present) by default"


def test_main_on_tiny_writes_json_and_prints_the_table(tmp_path, capsys):
    out = tmp_path / "tiny.json"
    res = bench.main(["--steps", "2", "--warmup", "1", "--batch-size", "2", "--caption-len", "8",
                      "--chat-len", "24", "--output", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved) >= {"env", "args", "model", "stage1", "targets", "stage2", "speed_table"}
    for key in ("device", "torch", "transformers", "date", "command"):
        assert saved["env"].get(key), f"env.{key} missing"
    rows = saved["stage1"]["methods"]
    assert set(rows) == set(METHODS)
    for m, row in rows.items():
        assert len(row["steps_ms"]) == 2 and row["step_ms"] > 0 and row["peak_mib"] > row["static_mib"] > 0, m
        assert torch.isfinite(torch.tensor(row["loss"])), f"{m}: non-finite loss"
    assert set(saved["stage1"]["breakdown_ms"]) == set(bench.PARTS)
    assert [t["name"] for t in saved["targets"]] == ["step time", "masks", "memory", "visper step time",
                                                     "visper step time, task tokens counted"]
    assert set(saved["stage1"]["visper_breakdown_ms"]) == {"target_encoders", "predictors_fwd", "predictors_fwd_bwd",
                                                           "task_tokens_llm"}
    assert len(saved["stage1"]["visper_extra_tokens_ms"]) == 2 and saved["stage1"]["visper_tokens_step_ms"] > 0
    assert saved["stage2"]["methods"]["llava"]["static_mib"] > rows["llava"]["static_mib"], \
        "stage 2 holds LLM gradients' optimizer state: more static memory than stage 1"
    printed = capsys.readouterr().out
    assert "jarvis" in printed and "step time" in printed and ("PASS" in printed or "FAIL" in printed)
    assert res["speed_table"][0].startswith("| LLM") and "| date | machine | command |" in res["speed_table"][0], "docs/speed.md rows returned"
