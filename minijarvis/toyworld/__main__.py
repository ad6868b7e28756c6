"""python -m minijarvis.toyworld build [--out DIR] [--size small|full] [--parts all|encoders] [--seed N] [--threads N]"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from minijarvis.config import TOY_ASSETS
from minijarvis.errors import HelpFormatter, add_debug_flag, nonnegative_int, positive_int, run_main
from minijarvis.toyworld.build import PARTS, SIZES, build


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m minijarvis.toyworld",
                                description="Train the toy world's pretrained parts (seeded, offline).",
                                formatter_class=HelpFormatter)
    p.add_argument("command", choices=("build",), help="what to do")
    p.add_argument("--out", default=str(TOY_ASSETS), help="output folder (the default is what the tiny preset loads)")
    p.add_argument("--size", choices=tuple(SIZES), default="full", help="small: seconds, for tests; full: the shipped parts")
    p.add_argument("--parts", choices=PARTS, default="all",
                   help="encoders: keep OUT's LLM, train the caption encoder and the expert only")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seeds data, initialisation and batches")
    p.add_argument("--threads", type=positive_int, default=1, help="CPU threads (results are seeded per thread count)")
    add_debug_flag(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    meta = build(args.out, args.size, args.seed, args.parts)
    print(json.dumps(meta["metrics"], indent=1))
    print(f"built the toy parts ({args.size}, seed {args.seed}) in {time.perf_counter() - start:.0f} s: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main, prog="python -m minijarvis.toyworld"))
