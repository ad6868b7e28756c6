"""Which LLM layer knows what a vision expert sees? Per-layer probes for minijarvis checkpoints.

For each checkpoint (frozen), each LLM layer (0 = input embeddings, ..., L) and each target
encoder, a probe learns to predict the target's features of an image from that layer's hidden
states (probe-train images); it is scored on other images (probe-test) by the cosine between
flattened prediction and target (VisPer-LM's probe score), by the mean per-token cosine and
by the centred cosine (the flat one with the probe-train mean target removed from both), each
with a 95% bootstrap interval. One LLM forward per image batch feeds all layers' probes.

Offline, tiny checkpoints from ``python train.py --stage align [--method llava]``:

    python probe.py --checkpoint runs/tiny-llava-align runs/tiny-jarvis-align --target tiny-dinov2

Real checkpoints on a GPU (targets: a timm name or preset; weights from the hub or local files):

    python probe.py --checkpoint runs/gemma2-2b-llava-align runs/gemma2-2b-jarvis-align \\
        --target dinov2-l --images data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json \\
        --image-folder data/LLaVA-Pretrain/images --limit 3000 --bf16 --device cuda

Writes --output-dir/probe.json (every number, the settings), probe.csv (checkpoint, target, layer,
probe, metric, mean, lo, hi) and probe.png (score vs layer per target and metric, one line per
checkpoint, intervals as bands, each method's own layer dotted, the mean-predictor baseline dashed).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from minijarvis.probes import report as probe_report
from minijarvis.probes import run as R
from minijarvis.errors import UsageError, add_debug_flag, nonnegative_int, positive_float, positive_int, run_main
from minijarvis.training.lock import output_lock
from minijarvis.probes.core import PROBES


def test_fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = p.add_argument
    add("--checkpoint", nargs="+", required=True, metavar="DIR", help="checkpoint folders (train.py outputs)")
    add("--target", action="append", required=True, metavar="SPEC",
        help="target encoder: a preset (tiny-dinov2, dinov2-l, depth-anything-v2-l, ...) or key=value parts (name=..,encoder=<timm>,rule=tokens|pooled,blocks=4+11,weights=FILE); repeat for more")
    add("--layers", default="all", help="'all' (0 = input embeddings ... L) or a comma list like 0,2,4")
    add("--probe", choices=PROBES, default="linear",
        help="linear (default: one map per visual slot, cheap) or resampler (the paper's: learnable queries reading every token; ~50x the compute)")
    add("--images", default="", metavar="PATH",
        help="a LLaVA JSON or a folder of images (default: synthetic scenes, generated offline)")
    add("--image-folder", default="", metavar="DIR", help="folder the JSON's image paths are relative to")
    add("--limit", type=positive_int, default=384, metavar="N", help="images in all, train + test (default 384)")
    add("--test-fraction", type=test_fraction, default=1 / 3, metavar="F",
        help="share of the images that score the probes (default 1/3)")
    add("--steps", type=positive_int, default=300, metavar="N", help="probe training steps (default 300)")
    add("--lr", type=positive_float, default=1e-3, help="probe learning rate (AdamW, cosine; default 1e-3)")
    add("--probe-width", type=positive_int, default=256, metavar="W", help="resampler width (default 256)")
    add("--batch-size", type=positive_int, default=32, metavar="N",
        help="images per LLM forward and per probe step (lower this if you run out of memory)")
    add("--bootstrap", type=positive_int, default=1000, metavar="N", help="bootstrap resamples (default 1000)")
    add("--seed", type=nonnegative_int, default=0, help="images, split, probe init and batches, bootstrap")
    add("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="default: cuda if available")
    add("--bf16", action="store_true", help="bfloat16 autocast for the LLM and the target encoders")
    add("--output-dir", default="runs/probe", metavar="DIR", help="where results go (default runs/probe)")
    add_debug_flag(p)
    return p.parse_args(argv)


def _labels(dirs: list[str]) -> list[str]:
    """Checkpoint folder names; repeated names get #k so lines stay apart."""
    names = [Path(d).resolve().name for d in dirs]
    return [n if names.count(n) == 1 else f"{n}#{k}" for k, n in enumerate(names)]


def main(argv=None) -> dict:
    """Run the CLI; returns what probe.json holds."""
    args = parse_args(argv)
    with output_lock(Path(args.output_dir)):  # one writer per output folder (minijarvis/training/lock.py)
        # Everything is checked before any work: checkpoints, targets, layers, images.
        infos = [R.checkpoint_info(d, label) for d, label in zip(args.checkpoint, _labels(args.checkpoint))]
        targets = R.parse_targets(args.target)
        layers = R.parse_layers(args.layers, infos)
        targets = [(name, spec, *R.stored_target(spec, infos)) for name, spec in targets]
        if args.images:
            Path(args.images).stat()  # a missing path: one line, before any work
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            raise UsageError(f"--device {args.device}: no CUDA device is available here (use --device cpu)")
        t0 = time.time()
        items = R.probe_images(args.images, args.image_folder, args.limit, args.seed)
        n_train, n_test = R.split_sizes(len(items), args.test_fraction)
        runs = [R.probe_checkpoint(info, layers[info.path], targets, items, n_train, args) for info in infos]
        settings = dict(probe=args.probe, steps=args.steps, lr=args.lr, probe_width=args.probe_width,
                        batch_size=args.batch_size, seed=args.seed, bootstrap=args.bootstrap, bf16=args.bf16,
                        images=args.images or "synthetic scenes", n_train=n_train, n_test=n_test,
                        targets=args.target, seconds=round(time.time() - t0, 1), command=" ".join(sys.argv))
        paths = probe_report.write_outputs(Path(args.output_dir), runs, settings)
        for run in runs:
            best = {}
            for r in run["rows"]:
                if r["metric"] == "flat" and r["mean"] > best.get(r["target"], (None, -2))[1]:
                    best[r["target"]] = (r["layer"], r["mean"])
            print(f"{run['label']}: best layer " + ", ".join(f"{t} {l} ({m:.3f})" for t, (l, m) in best.items())
                  + f"; {run['seconds']['total']} s")
        print("wrote " + ", ".join(str(p) for p in paths.values()))
        return dict(settings=settings, checkpoints=runs)


if __name__ == "__main__":
    sys.exit(run_main(main, prog="probe.py"))
