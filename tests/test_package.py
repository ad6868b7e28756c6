"""The installable package: its metadata lists exactly requirements.txt, and the package
imports from outside the repository."""
from __future__ import annotations

import email.parser
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _requirements() -> tuple[list[str], list[str]]:
    """requirements.txt split at its first comment: (runtime, tests)."""
    runtime, tests, part = [], [], None
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        if line.startswith("#"):
            part = tests
        elif line.strip():
            (runtime if part is None else part).append(line.strip())
    return runtime, tests


def _metadata(tmp_path) -> email.message.Message:
    """The wheel metadata setuptools builds from pyproject.toml (offline, no install)."""
    code = ("import sys; from setuptools import build_meta; "
            "print(build_meta.prepare_metadata_for_build_wheel(sys.argv[1]))")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return email.parser.Parser().parsestr((tmp_path / out / "METADATA").read_text())


def test_package_metadata_lists_requirements_txt(tmp_path):
    runtime, tests = _requirements()
    meta = _metadata(tmp_path)
    requires = meta.get_all("Requires-Dist")
    plain = [r for r in requires if ";" not in r]
    extra = [r.split(";")[0].strip() for r in requires if r.endswith('extra == "test"')]
    assert plain == runtime, f"pyproject dependencies {plain} != requirements.txt {runtime}"
    assert extra == tests, f"pyproject extra 'test' {extra} != requirements.txt's tests {tests}"
    assert {"test", "tensorboard", "wandb"} <= set(meta.get_all("Provides-Extra"))


def test_package_version_matches_init(tmp_path):
    import minijarvis
    assert _metadata(tmp_path)["Version"] == minijarvis.__version__


def test_import_works_from_another_folder(tmp_path):
    """What `pip install -e .` gives (here through PYTHONPATH): the package, not the cwd."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-c", "import minijarvis.export.llava, minijarvis.training.trackers; "
                          "import minijarvis; print(minijarvis.__file__)"], cwd=tmp_path, env=env,
                         check=True, capture_output=True, text=True).stdout
    assert Path(out.strip()).parent == ROOT / "minijarvis"
