"""Run-time helpers: glibc's allocator on CPU, the LR schedule, resumable state, atomic checkpoint directories."""
from __future__ import annotations

import math
import os
import resource
import sys

import pytest
import torch

from minijarvis.training import runtime


def test_cosine_lr_warms_up_linearly_then_decays_to_zero():
    total, base = 100, 1e-3  # warm-up = ceil(0.03 * 100) = 3 steps
    assert [runtime.cosine_lr(s, total, base) for s in range(3)] == pytest.approx(
        [base / 3, 2 * base / 3, base])
    assert runtime.cosine_lr(3, total, base) == pytest.approx(base), "decay starts at the peak"
    mid = 3 + (total - 3) / 2
    assert runtime.cosine_lr(int(mid), total, base) == pytest.approx(
        base * 0.5 * (1 + math.cos(math.pi * (int(mid) - 3) / 97)))
    assert runtime.cosine_lr(total, total, base) == pytest.approx(0.0, abs=1e-12)


def test_trainer_state_round_trips_optimizer_and_every_rng(tmp_path):
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=1e-2)
    p.sum().backward()
    opt.step()
    gens = {"lambda": torch.Generator().manual_seed(1), "mask": torch.Generator().manual_seed(2)}
    state = {"state": {"w": opt.state_dict()["state"][0]},
             "param_groups": [{**opt.state_dict()["param_groups"][0], "params": ["w"]}]}
    runtime.save_trainer_state(tmp_path, state, {"step": 7}, gens)
    expected = [torch.rand(2, generator=g) for g in gens.values()] + [torch.rand(2)]
    loaded, progress = runtime.load_trainer_state(tmp_path, gens)
    again = [torch.rand(2, generator=g) for g in gens.values()] + [torch.rand(2)]
    assert progress == {"step": 7}
    for a, b in zip(expected, again):
        assert torch.equal(a, b), "RNG streams must continue exactly where they were saved"
    for key in ("exp_avg", "exp_avg_sq", "step"):
        assert torch.equal(loaded["state"]["w"][key], state["state"]["w"][key]), key


def test_atomic_directory_replaces_whole_and_recovers_from_a_crash_between_renames(tmp_path):
    final = tmp_path / "checkpoint"
    with runtime.write_dir_atomically(final) as tmp:
        (tmp / "a").write_text("1")
    with runtime.write_dir_atomically(final) as tmp:
        (tmp / "a").write_text("2")
    assert (final / "a").read_text() == "2" and not list(tmp_path.glob("*.old"))
    final.rename(tmp_path / "checkpoint.old")  # the state a crash after the first rename leaves
    runtime.recover_checkpoint(final)
    assert (final / "a").read_text() == "2"


def test_keep_freed_memory_stops_refaulting_what_a_step_frees(monkeypatch):
    """Ten 20 MiB tensors made and freed per 'step': glibc returns them to the OS (mmap, or a
    heap trim above its 64 MiB trim ceiling), so each step faults every page in again (51,162
    of 51,200 pages measured here); kept, the next step reuses them."""
    keep_freed_memory = runtime.keep_freed_memory
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc's mallopt: Linux only")
    for k in [k for k in os.environ if k.startswith("MALLOC_")] + ["LD_PRELOAD"]:
        monkeypatch.delenv(k, raising=False)
    if not keep_freed_memory():
        pytest.skip("not glibc (mallopt absent)")

    def step():
        return [torch.ones(20 << 20, dtype=torch.uint8) for _ in range(10)]
    step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(2):
        step()
    faults, pages = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 2, 10 * (20 << 20) // 4096
    assert faults < 0.25 * pages, f"{faults:.0f} page faults per step for {pages} pages freed and made again"
    monkeypatch.setenv("MALLOC_ARENA_MAX", "2")
    assert not keep_freed_memory(), "glibc tuned by the user's MALLOC_* variables: left alone"


def test_plot_log_draws_each_visper_term_by_name(tmp_path):
    import json
    rows = [dict(step=s, loss=3.0 - s, ntp_loss=2.0, visper_loss=1.0 - s / 4, **{"visper/depth/l8": 0.5,
            "visper/gen/l20": 0.4}) for s in (1, 2)]
    (tmp_path / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    drawn = runtime.plot_log(tmp_path / "log.jsonl", tmp_path / "loss.png", "visper - align")
    assert drawn == ["loss", "ntp_loss", "visper_loss", "visper/depth/l8", "visper/gen/l20"]
    assert (tmp_path / "loss.png").stat().st_size > 1000
