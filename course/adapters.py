"""The one adapter file: which implementation each graded name comes from.

A student's work is one Python file per assignment (a filled-in copy of the starter); the
grader loads the names below from it. ``solution`` maps the same names to minijarvis itself,
the single source of truth: the kit grades the package with the tests it grades students with.
A4 is an experiment: its "implementation" is a folder holding ``writeup.md`` and ``study.json``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
FOLDERS = {"A1": "a1_masks", "A2": "a2_jarvis_step", "A3": "a3_visper", "A4": "a4_experiment"}
SOLUTION = {
    "A1": {"block_size": "minijarvis.masking:block_size",
           "place_blocks": "minijarvis.masking:place_blocks",
           "truncate_context": "minijarvis.masking:truncate_context",
           "MaskSampler": "minijarvis.masking:MaskSampler",
           "build_attention_mask": "minijarvis.attn_mask:build_attention_mask"},
    "A2": {"insert_latent": "minijarvis.model:insert_latent",
           "token_distance": "minijarvis.losses:token_distance",
           "jepa_loss": "minijarvis.losses:jepa_loss",
           "jepa_coin": "minijarvis.model:jepa_coin",
           "set_stage1_trainable": "minijarvis.model:JarvisModel.set_trainable"},
    "A3": {"chunk_means": "minijarvis.visper:chunk_means",
           "task_token_index": "minijarvis.visper:task_token_index",
           "Resampler": "minijarvis.visper:Resampler",
           "info_nce": "minijarvis.losses:info_nce",
           "embedding_loss": "minijarvis.visper:embedding_loss"},
}
ASSIGNMENTS = tuple(FOLDERS)


def _resolve(spec: str):
    module, _, attr = spec.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def solution(assignment: str) -> SimpleNamespace:
    """The package's own implementation of every graded name."""
    if assignment == "A4":
        return SimpleNamespace(folder=HERE / "a4_experiment" / "solution",
                               study=HERE.parent / "docs" / "study.json")
    return SimpleNamespace(**{name: _resolve(spec) for name, spec in SOLUTION[assignment].items()})


def starter_path(assignment: str) -> Path:
    if assignment == "A4":
        return HERE / "a4_experiment" / "starter"
    return HERE / FOLDERS[assignment] / "starter.py"


def load_file(path: str | Path, name: str | None = None):
    """Import a Python file as a fresh module (a student's file, a starter, a planted mistake)."""
    path = Path(path).resolve()
    name = name or f"_graded_{path.stem}_{abs(hash(str(path)))}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None:
        raise FileNotFoundError(f"no Python file at {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look a module up by name
    spec.loader.exec_module(module)
    return module


def load(assignment: str, impl: str | Path | None = None, use_solution: bool = False) -> SimpleNamespace:
    """The implementation to grade: the package (``use_solution``), the file or folder ``impl``,
    or the untouched starter. A name missing from a student's file grades as not implemented."""
    if assignment not in FOLDERS:
        raise ValueError(f"assignment must be one of {ASSIGNMENTS}, got {assignment!r}")
    if use_solution:
        return solution(assignment)
    path = Path(impl) if impl else starter_path(assignment)
    if assignment == "A4":
        return SimpleNamespace(folder=path, study=path / "study.json")
    module = load_file(path)
    return SimpleNamespace(**{name: getattr(module, name, _missing(name)) for name in SOLUTION[assignment]})


def _missing(name):
    def stub(*args, **kwargs):
        raise NotImplementedError(f"{name} is not in the submitted file")
    return stub
