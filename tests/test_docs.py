"""Every command in README.md, docs/*.md and course/**/*.md runs as written.

The commands are the lines of the ```` ```bash ```` blocks (a line ending in ``\\`` joins the
next; ``#`` comments dropped; ``a && b`` is two commands). Each command that starts one of the
repository's entry points (``python train.py|eval.py|bench.py|probe.py|study.py``, also under
``torchrun``, ``python -m minijarvis.export|viz|toyworld`` and ``python -m course.grade``) must
parse with that entry point's own ``parse_args(argv)``, in-process, without doing the work. Any other command must be one this file
knows (pip, cp, pytest, tensorboard, lmms-eval, vLLM, ``python -c``), so a renamed script is caught.

A block preceded by the line ``<!-- test: run -->`` is cheap: its commands run end to end, as
written, in a temporary working directory (so ``runs/...`` lands there), with OMP_NUM_THREADS=1;
only the script path is rewritten to the repository's. Keep that set to seconds.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "course").rglob("*.md"))]
RUN_MARK = "<!-- test: run -->"
SCRIPTS = ("train.py", "eval.py", "bench.py", "probe.py", "study.py")
# python -m MODULE -> the module whose parse_args(argv) parses its flags
MODULES = {"minijarvis.export": "minijarvis.export.llava",
           "minijarvis.viz": "minijarvis.viz",
           "minijarvis.toyworld": "minijarvis.toyworld.__main__",
           "course.grade": "course.grade"}
EXTERNAL_PROGRAMS = ("pip", "tensorboard", "vllm", "bash", "cp")
EXTERNAL_MODULES = ("pytest", "lmms_eval")
RUN_TIMEOUT = 120  # seconds per cheap command; each takes ~5-15 s on 2 shared cores


@dataclass(frozen=True)
class Command:
    page: str      # README.md or docs/x.md
    line: int      # line of the command's first line
    argv: tuple    # shlex tokens, comments dropped
    cheap: bool    # its block is marked to run

    def __str__(self):
        return f"{self.page}:{self.line}: `{shlex.join(self.argv)}`"


@dataclass(frozen=True)
class Block:
    page: str
    line: int
    commands: tuple


def bash_blocks(path: Path) -> list[Block]:
    """The ```bash blocks of a markdown page, each with its commands."""
    page = str(path.relative_to(ROOT))
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks, i = [], 0
    while i < len(lines):
        if lines[i].strip() != "```bash":
            i += 1
            continue
        cheap = i > 0 and lines[i - 1].strip() == RUN_MARK
        start, i = i + 1, i + 1
        body = []
        while i < len(lines) and lines[i].strip() != "```":
            body.append((i + 1, lines[i]))
            i += 1
        assert i < len(lines), f"{page}:{start}: a ```bash block is never closed"
        blocks.append(Block(page, start, tuple(split_commands(page, body, cheap))))
        i += 1
    return blocks


def split_commands(page: str, body, cheap: bool):
    joined, first, parts = [], None, []
    for lineno, text in body:
        first = first or lineno
        if text.rstrip().endswith("\\"):
            parts.append(text.rstrip()[:-1])
            continue
        parts.append(text)
        joined.append((first, " ".join(parts)))
        first, parts = None, []
    assert not parts, f"{page}:{first}: the block ends on a continuation line (a trailing backslash)"
    for lineno, text in joined:
        tokens = shlex.split(text, comments=True)
        while tokens:
            cut = tokens.index("&&") if "&&" in tokens else len(tokens)
            if cut:
                yield Command(page, lineno, tuple(tokens[:cut]), cheap)
            tokens = tokens[cut + 1:]


BLOCKS = [b for page in PAGES for b in bash_blocks(page)]
COMMANDS = [c for b in BLOCKS for c in b.commands]


def entry_point(argv) -> tuple[str, list[str]] | None:
    """(script name or module, its arguments) for a command that starts an entry point."""
    argv = list(argv)
    if argv[0] == "torchrun":  # torchrun's own options, then the script
        scripts = [k for k, a in enumerate(argv) if a.endswith(".py")]
        return (argv[scripts[0]], argv[scripts[0] + 1:]) if scripts else None
    if argv[0] != "python" or len(argv) < 2:
        return None
    if argv[1] in SCRIPTS:
        return argv[1], argv[2:]
    if argv[1] == "-m" and len(argv) > 2 and argv[2] in MODULES:
        return argv[2], argv[3:]
    return None


def is_known_external(argv) -> bool:
    if argv[0] in EXTERNAL_PROGRAMS:
        return True
    return argv[0] == "python" and len(argv) > 1 and (
        argv[1] == "-c" or (argv[1] == "-m" and len(argv) > 2 and argv[2] in EXTERNAL_MODULES))


# ---------------------------------------------------------------- parsing without the work
_LOADED: dict = {}


def parser_of(name: str):
    """The entry point's own ``parse_args(argv)``: its flags and their checks, none of its work."""
    if name not in _LOADED:
        if name in SCRIPTS:
            spec = importlib.util.spec_from_file_location(f"_docs_{name[:-3]}", ROOT / name)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(MODULES[name])
        _LOADED[name] = module.parse_args
    return _LOADED[name]


ENTRY_COMMANDS = [c for c in COMMANDS if entry_point(c.argv)]


@pytest.mark.parametrize("cmd", ENTRY_COMMANDS, ids=str)
def test_entry_point_command_parses_with_its_own_parser(cmd):
    name, args = entry_point(cmd.argv)
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            parser_of(name)(args)
    except SystemExit as e:
        if e.code not in (0, None):
            pytest.fail(f"{cmd}: its flags do not parse with {name}'s own parser "
                        f"(exit {e.code}): {err.getvalue().strip()}", pytrace=False)
    except Exception as e:  # a flag value rejected after parsing (UsageError, ...)
        pytest.fail(f"{cmd}: {name} rejects these flags: {type(e).__name__}: {e}", pytrace=False)


def test_every_command_is_an_entry_point_or_a_known_tool():
    unknown = [str(c) for c in COMMANDS if not entry_point(c.argv) and not is_known_external(c.argv)]
    assert not unknown, ("commands that are neither one of the repository's entry points "
                         f"({', '.join(SCRIPTS + tuple(MODULES))}) nor a known tool (a renamed "
                         "script? a typo?):\n" + "\n".join(unknown))


def test_docs_have_commands_and_a_cheap_set():
    assert len(ENTRY_COMMANDS) >= 20, f"found only {len(ENTRY_COMMANDS)} entry-point commands: is the extraction broken?"
    assert any(b.commands and b.commands[0].cheap for b in BLOCKS), f"no block is marked {RUN_MARK!r}"


def test_readme_keeps_the_ci_and_install_commands():
    readme = [shlex.join(c.argv) for c in COMMANDS if c.page == "README.md"]
    for expected in ("python -m pytest", "pip install -r requirements.txt", "pip install -e ."):
        assert expected in readme, f"README.md lost the command `{expected}` (CI and the install rely on it)"


def test_relative_links_between_pages_resolve():
    broken = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            if "://" not in target and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, "links to files that do not exist:\n" + "\n".join(broken)


# ---------------------------------------------------------------- the cheap blocks, end to end
def as_run_here(argv) -> list[str]:
    """The command as written, with this interpreter and the repository's script path."""
    argv = list(argv)
    if argv[0] == "python":
        argv[0] = sys.executable
        if len(argv) > 1 and argv[1] in SCRIPTS:
            argv[1] = str(ROOT / argv[1])
    return argv


CHEAP_BLOCKS = [b for b in BLOCKS if b.commands and b.commands[0].cheap]


@pytest.mark.parametrize("block", CHEAP_BLOCKS, ids=lambda b: f"{b.page}:{b.line}")
def test_cheap_block_runs_as_written(block, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    for cmd in block.commands:
        try:
            done = subprocess.run(as_run_here(cmd.argv), cwd=tmp_path, env=env, capture_output=True,
                                  text=True, timeout=RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{cmd}: still running after {RUN_TIMEOUT} s; a block marked {RUN_MARK!r} "
                        "must take seconds", pytrace=False)
        assert done.returncode == 0, (f"{cmd} failed (exit {done.returncode}), run in {tmp_path}:\n"
                                      f"{(done.stdout + done.stderr)[-2000:]}")
