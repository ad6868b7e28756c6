"""What bench.py reports: the issue's three targets decided from a stage-1 result, the printed
table with the JARVIS breakdown, and docs/speed.md's rows (:func:`speed_table`)."""
from __future__ import annotations

from minijarvis.bench.measure import median


def check_visper(s1: dict) -> list[dict]:
    """VisPer-LM's step-time target, paired round by round, median <= 5% of the llava step.

    The issue's form: visper - llava - the target encoders' forward - the predictors'
    forward/backward. It leaves out the method's third part, the 8 task tokens per target that
    lengthen the LLM's sequence; so a second row takes llava's step at visper's length
    (``visper_tokens``: the same sequence on NTP alone) instead of llava's."""
    if not {"llava", "visper"} <= set(s1["methods"]):
        return []
    rows, ll, vp, parts = [], s1["methods"]["llava"], s1["methods"]["visper"], s1["visper_breakdown_ms"]
    for key, name, base in (("visper_extra_ms", "visper step time", "llava"),
                            ("visper_extra_tokens_ms", "visper step time, task tokens counted", "llava at visper's length")):
        if not s1.get(key):
            continue
        extra, budget = median(s1[key]), 0.05 * ll["step_ms"]
        tokens = f", task tokens in the LLM {parts['task_tokens_llm']:.1f}" if "task_tokens_llm" in parts else ""
        rows.append(dict(name=name, passed=extra <= budget,
                         text=f"visper - {base} - targets fwd - predictors fwd/bwd, paired by round: median "
                              f"{extra:.2f} ms <= 5% of llava {budget:.2f} ms  (medians: visper {vp['step_ms']:.1f}, "
                              f"llava {ll['step_ms']:.1f}, targets fwd {parts['target_encoders']:.1f}, "
                              f"predictors fwd/bwd {parts['predictors_fwd_bwd']:.1f}{tokens} ms)"))
    return rows


def check_targets(s1: dict) -> list[dict]:
    """The three targets of the issue, with the numbers that decide them.

    Step time: jarvis - llava - F_tgt forward is taken round by round (the methods run
    interleaved, so noise common to a round cancels), and its median must be <= 3% of the
    llava step; the medians of the three are printed beside it. Masks: the median over the
    jarvis steps of sampling + building, <= 2% of the jarvis step."""
    if not {"llava", "jarvis"} <= set(s1["methods"]):
        return check_visper(s1)
    ll, jv, parts, tgt = s1["methods"]["llava"], s1["methods"]["jarvis"], s1["breakdown_ms"], s1["target_encoder_mib"]
    extra, budget = median(s1["extra_ms"]), 0.03 * ll["step_ms"]
    steps = s1["breakdown_steps_ms"]
    masks = median(a + b for a, b in zip(steps["mask_sampling"], steps["mask_building"]))
    mem = 1.05 * ll["peak_mib"] + tgt["weights"] + tgt["activations"]
    return [dict(name="step time", passed=extra <= budget,
                 text=f"jarvis - llava - F_tgt fwd, paired by round: median {extra:.2f} ms <= 3% of llava "
                      f"{budget:.2f} ms  (medians: jarvis {jv['step_ms']:.1f}, llava {ll['step_ms']:.1f}, "
                      f"F_tgt fwd {parts['target_encoder']:.1f} ms)"),
            dict(name="masks", passed=masks <= 0.02 * jv["step_ms"],
                 text=f"sampling {parts['mask_sampling']:.2f} + building {parts['mask_building']:.2f}: "
                      f"median {masks:.2f} ms <= 2% of the jarvis step = {0.02 * jv['step_ms']:.2f} ms"),
            dict(name="memory", passed=jv["peak_mib"] <= mem,
                 passed_activations_only=jv["peak_mib"] <= mem - tgt["weights"],
                 text=f"jarvis {jv['peak_mib']:.1f} MiB <= 1.05 x llava {ll['peak_mib']:.1f} + F_tgt weights "
                      f"{tgt['weights']:.1f} + F_tgt activations {tgt['activations']:.1f} = {mem:.1f} MiB"),
            *check_visper(s1)]


def speed_table(results) -> list[str]:
    """Markdown rows for docs/speed.md's training-step table: every figure with its date, the
    machine (the device bench.py ran on) and the command that measured it."""
    lines = ["| LLM (random weights) | stage, method | batch | step (ms) | samples/s | tokens/s | peak memory "
             "| MFU | date | machine | command |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        env = r["env"]
        for stage in ("stage1", "stage2"):
            s = r.get(stage) or {}
            for m, row in s.get("methods", {}).items():
                util = "-" if row["mfu"] is None else f"{100 * row['mfu']:.1f}%"
                peak = row["peak_mib"]
                peak = f"{peak / 1024:.2f} GiB" if peak >= 1024 else f"{peak:.0f} MiB"
                lines.append(f"| {r['model']['name']} | {stage[-1]}, {m} | {s['batch_size']} | {row['step_ms']:.0f} | "
                             f"{row['samples_per_s']:.2f} | {row['tokens_per_s']:.0f} | {peak} | {util} | "
                             f"{env['date'][:10]} | {env['device']} | `{env['command']}` |")
    return lines


def print_report(res: dict) -> None:
    a, env, s1 = res["args"], res["env"], res["stage1"]
    print(f"\nminijarvis bench: {res['model']['name']} on {env['device']}, {env['date']}")
    print(f"{'bf16 (train.py --bf16)' if a['bf16'] else 'fp32'}, gradient checkpointing "
          f"{'on' if a['grad_ckpt'] else 'off'}, attention {res['model']['attn']}; median of {a['steps']} "
          f"steps after {a['warmup']} warm-up rounds, methods interleaved")
    print(f"{'stage':<6}{'method':<8}{'batch':>6}{'seq':>6}{'step ms':>10}{'samples/s':>11}{'tokens/s':>10}"
          f"{'peak MiB':>10}{'= static':>10}{' + transient':>13}{'MFU':>7}")
    for stage in ("stage1", "stage2"):
        s = res.get(stage) or {}
        if "skipped" in s:
            print(f"{stage[-1]:<6}skipped: {s['skipped']}")
        for m, r in s.get("methods", {}).items():
            util = "-" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%"
            print(f"{stage[-1]:<6}{m:<8}{s['batch_size']:>6}{s['seq_len']:>6}{r['step_ms']:>10.1f}{r['samples_per_s']:>11.2f}"
                  f"{r['tokens_per_s']:>10.0f}{r['peak_mib']:>10.1f}{r['static_mib']:>10.1f}{r['transient_mib']:>13.1f}{util:>7}")
    if res.get("stage2", {}).get("weights"):
        print(f"stage 2 weights: {res['stage2']['weights']}")
    if "breakdown_ms" in s1:
        jv = s1["methods"]["jarvis"]["step_ms"]
        parts = dict(s1["breakdown_ms"], other=jv - sum(v for k, v in s1["breakdown_ms"].items() if k != "llm_fwd_bwd_causal"))
        print("JARVIS step breakdown (median ms, % of the jarvis step; llm_fwd_bwd_causal = the llava step's LLM, not a part):")
        print("  " + "  ".join(f"{k} {v:.2f} ({100 * v / jv:.1f}%)" for k, v in parts.items()))
    if "visper_breakdown_ms" in s1:
        vp, parts = s1["methods"]["visper"]["step_ms"], s1["visper_breakdown_ms"]
        shown = {k: parts[k] for k in ("target_encoders", "predictors_fwd_bwd", "task_tokens_llm") if k in parts}
        shown["rest"] = vp - sum(shown.values())
        print("VisPer-LM step breakdown (median ms, % of the visper step; predictors fwd/bwd run alone after "
              "each step, their fwd also timed inside it; task_tokens_llm = llava at visper's length - llava):")
        print("  " + "  ".join(f"{k} {v:.2f} ({100 * v / vp:.1f}%)" for k, v in shown.items())
              + f"  [predictors_fwd {parts['predictors_fwd']:.2f}]")
    for k, v in (res.get("attention") or {}).items():
        print(f"attention {k}: " + (v if isinstance(v, str) else f"{v['step_ms']:.1f} ms, transient {v['transient_mib']:.0f} MiB"))
    for t in res["targets"]:
        print(f"[{'PASS' if t['passed'] else 'FAIL'}] {t['name']}: {t['text']}")
    if res["targets"] and a["preset"] == "tiny":
        print("(tiny: fixed per-step costs -- mask code, F_tgt's Python, small ops -- weigh far more than at real shapes)")
