"""Experiment trackers for train.py's ``--report-to none|tensorboard|wandb``.

A tracker receives what ``log.jsonl`` receives (every numeric field of a log row, against the
optimizer step), the run's configs as hyper-parameters, and the run name (the output folder's
name). Its package is imported only when chosen; a missing one is an :class:`InputError`
with the install line.

* ``tensorboard``: event files in ``OUTPUT/tensorboard/<run name>/`` (``tensorboard --logdir
  runs``). The hyper-parameters go into the same event file (the HParams tab), the config also
  as text. A resumed run drops the events written after the step it resumes from.
* ``wandb``: ``wandb.init(project="minijarvis", name=<run name>, config=...)`` under
  ``OUTPUT/``, **offline unless ``WANDB_MODE`` says otherwise** (nothing reaches the network
  unless asked; ``wandb sync OUTPUT/wandb/offline-run-*`` uploads later).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

from minijarvis.config import TRACKERS
from minijarvis.errors import InputError

_INSTALL = {"tensorboard": "pip install tensorboard", "wandb": "pip install wandb"}


def scalars(row: dict) -> dict[str, float]:
    """The numbers of a log row worth plotting: every int/float except ``step`` (bools too, as
    0/1: ``jepa_ran`` is a fraction). None (a loss a step did not compute) is left out."""
    return {k: float(v) for k, v in row.items()
            if k != "step" and isinstance(v, (int, float))}


def flat_hparams(configs: dict) -> dict:
    """{"model": ModelConfig, "train": TrainConfig, ...} -> {"model.method": "jarvis", ...}
    with values a tracker accepts (int, float, str, bool); lists, dicts and None as JSON text."""
    out = {}
    for part, cfg in configs.items():
        values = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else {"": cfg}
        for name, value in values.items():
            key = f"{part}.{name}" if name else part
            ok = isinstance(value, (int, float, str, bool))
            out[key] = value if ok else json.dumps(value, sort_keys=True)
    return out


def require(kind: str) -> None:
    """Raise the install hint now if ``kind``'s package is missing (train.py calls this before
    it builds a model)."""
    if kind != "none":
        _import(kind)


def _import(kind: str):
    try:
        if kind == "tensorboard":
            from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package
            return SummaryWriter
        import wandb
        return wandb
    except ImportError:
        raise InputError(f"--report-to {kind} needs the {kind} package, which is not installed: "
                         f"{_INSTALL[kind]} (or pip install -e \".[{kind}]\")") from None


class TensorBoardTracker:
    def __init__(self, output: Path, run_name: str, hparams: dict, done_steps: int = 0):
        writer_cls = _import("tensorboard")
        from torch.utils.tensorboard.summary import hparams as hparams_summary

        self.logdir = Path(output) / "tensorboard" / run_name
        # Resumed: drop what the interrupted run logged after its checkpoint (written again).
        self.writer = writer_cls(str(self.logdir), purge_step=done_steps + 1 if done_steps else None)
        if not done_steps:
            # add_hparams() would open a second, time-stamped run; write its summaries here.
            for summary in hparams_summary(hparams, {}):
                self.writer.file_writer.add_summary(summary)
            self.writer.add_text("config", "```\n" + json.dumps(hparams, indent=1) + "\n```")

    def log(self, row: dict) -> None:
        for key, value in scalars(row).items():
            self.writer.add_scalar(f"train/{key}", value, row["step"])

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    def __init__(self, output: Path, run_name: str, hparams: dict, done_steps: int = 0):
        self.wandb = _import("wandb")
        self.run = self.wandb.init(project="minijarvis", name=run_name, config=hparams,
                                   dir=str(output), mode=os.environ.get("WANDB_MODE", "offline"))

    def log(self, row: dict) -> None:
        self.run.log({f"train/{k}": v for k, v in scalars(row).items()}, step=row["step"])

    def close(self) -> None:
        self.run.finish()


def open_tracker(kind: str, output: Path, configs: dict, done_steps: int = 0):
    """The tracker ``kind`` names (None for "none"), for the run writing to ``output``;
    ``done_steps``: the optimizer steps a resumed run has already done."""
    if kind not in TRACKERS:
        raise ValueError(f"report_to must be one of {', '.join(TRACKERS)}; got {kind!r}")
    if kind == "none":
        return None
    cls = TensorBoardTracker if kind == "tensorboard" else WandbTracker
    return cls(Path(output), Path(output).resolve().name, flat_hparams(configs), done_steps)
