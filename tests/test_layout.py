"""The package's layout (issue 20): the method at the top, machinery in wings, imports one way.

Imports are read from the source (``ast``), lazy ones inside functions included, so a circle
hidden behind a function-level import is found too.
"""
from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "minijarvis"
# The method: what a reader of the papers looks for. Each may import only its peers.
METHOD = {"masking", "attn_mask", "losses", "model", "visper", "targets", "encoders", "config",
          "llm", "viz", "errors"}
WINGS = {"data", "training", "evaluation", "probes", "bench", "export", "toyworld"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package modules ``name`` imports, anywhere in the file (``from X import sub`` counts
    the submodule ``X.sub`` when it is one)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found |= {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in known and m != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def test_the_top_holds_the_method_and_the_wings():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    folders = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    assert top == METHOD, f"files at minijarvis/'s top that are not the method: {sorted(top - METHOD)}; " \
                          f"method files missing: {sorted(METHOD - top)}"
    assert folders == WINGS, f"wings: expected {sorted(WINGS)}, found {sorted(folders)}"


def test_no_import_circle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node):
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_the_method_imports_no_wing(graph):
    for name in METHOD:
        wings = sorted(m for m in graph[f"minijarvis.{name}"] if m.split(".")[1] in WINGS)
        assert not wings, f"minijarvis/{name}.py is the method but imports the wing(s) {wings}"


def test_config_imports_nothing_it_configures(graph):
    assert graph["minijarvis.config"] <= {"minijarvis.errors"}, \
        f"config.py imports {sorted(graph['minijarvis.config'])}: a config never imports the code it configures"


def test_lazy_and_relative_imports_are_seen(tmp_path):
    """The checks above would pass vacuously if function-level or relative imports were missed."""
    source = tmp_path / "study.py"
    source.write_text("def f():\n    from ..model import JarvisModel\n    from minijarvis.data import shapes\n")
    known = {"minijarvis.model", "minijarvis.data", "minijarvis.data.shapes"}
    assert imports_of("minijarvis.toyworld.study", source, known) == known


def test_a_checkpoint_written_before_the_move_loads_and_computes_the_same():
    """tests/golden/legacy-align was written by main before the layout change (its
    expected.json says how); it must load with today's code and score as it did then."""
    from minijarvis.evaluation.inference import score_options
    from minijarvis.training.checkpoint import load_checkpoint

    folder = Path(__file__).parent / "golden" / "legacy-align"
    expected = json.loads((folder / "expected.json").read_text())
    model = load_checkpoint(folder).eval()
    image = torch.rand(1, 3, 192, 192, generator=torch.Generator().manual_seed(0))
    scores = score_options(model, image, [expected["prompt"]], [expected["options"]])[0]
    assert torch.allclose(scores, torch.tensor(expected["scores"]), atol=1e-4), \
        f"the legacy checkpoint scores {scores.tolist()}, it scored {expected['scores']} when written"
