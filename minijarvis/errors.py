"""How every entry point reports bad input: one line, a fitting exit status, no traceback.

* A bad flag value is a **usage error** (exit status 2): argparse types below reject it at
  start-up with one line naming the flag and what is allowed, e.g.
  ``train.py: error: argument --batch-size: must be an integer >= 1, got '0'``.
* An unusable file (missing, invalid JSON, not a checkpoint, ...) or any other failure the
  user can fix is an :class:`InputError` (exit status 1): one line naming the file and the
  problem. Raise it (or :class:`UsageError` for a combination of flags that argparse cannot
  check) anywhere below ``main``; :func:`run_main` turns it into that line. A data record that
  cannot be used is a :class:`BadRecord` (an InputError naming the record), which the data
  set turns into a skip with a reason unless ``--strict``.
* An operating-system error (a read-only file system, a full disk, a folder that is not
  empty, ...) is exit status 1 too, one line naming the path (:func:`os_error_line`).
* A file a run reads back (a checkpoint's config, trainer state, a log) goes through
  :func:`read_json`, whose damage is an InputError naming the file.
* ``--debug`` (every entry point has it; :func:`add_debug_flag`) shows the traceback instead.

Use in an entry point: build the parser with :class:`ArgumentParser` (argparse's, whose own
errors are one line too), give every flag a type below or ``choices``, and end with::

    if __name__ == "__main__":
        sys.exit(run_main(main, prog="train.py"))
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path


class UsageError(Exception):
    """Flags that cannot work together (exit status 2)."""

    exit_code = 2


class InputError(Exception):
    """A file or value the run cannot use (exit status 1). The message names the file."""

    exit_code = 1


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """argparse's "(default: X)" after each flag's help, unless the help text already states its
    default or there is none worth showing (None, False, "")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, "", argparse.SUPPRESS):
            return text
        return super()._get_help_string(action)


class BadRecord(InputError):
    """A data record that cannot be used: ``record_id`` (str), a human-readable ``reason`` and
    the ``source`` file if known. An InputError: uncaught (``--strict``), it ends the run with
    one line, exit status 1."""

    def __init__(self, record_id: str, reason: str, source: str = ""):
        super().__init__(record_id, reason, source)  # all in args, so it pickles across workers
        self.record_id, self.reason, self.source = record_id, reason, source

    def __str__(self) -> str:
        where = f"{self.source}: " if self.source else ""
        return f"{where}record {self.record_id!r}: {self.reason}"


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser, but a bad command line is one line (argparse prints the usage first):
    ``train.py: error: argument --batch-size: must be an integer >= 1, got '0'``, exit status 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def brief(error: BaseException) -> str:
    """The first line of an exception's message (library errors can run to a page)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def os_error_line(error: OSError) -> str:
    """An OSError as ``path: reason`` (``path -> other: reason`` for a rename), or its message
    when it names no path."""
    if error.filename is None:
        return brief(error)
    where = str(error.filename) + (f" -> {error.filename2}" if error.filename2 is not None else "")
    return f"{where}: {error.strerror or brief(error)}"


def read_json(path, what: str = "file"):
    """The JSON value in ``path``; :class:`InputError` naming the file when it is not UTF-8 JSON
    (a damaged or truncated file). A missing file raises FileNotFoundError (one line too)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: damaged {what}, not valid JSON ({e.msg} at line {e.lineno} "
                         f"column {e.colno})") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: damaged {what}, not UTF-8 text") from None


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the full Python traceback on errors")


def run_main(main, prog: str, argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; turn a UsageError / InputError / OSError into one line on stderr and
    its exit status, unless ``--debug`` is among the arguments. Returns the exit
    status (``main``'s own if it returns an int, else 0); argparse's exits become theirs."""
    args = sys.argv[1:] if argv is None else argv
    try:
        result = main(argv)
    except SystemExit as e:  # argparse (2, its line already printed), --help (0), SystemExit("text")
        if e.code is None or isinstance(e.code, int):
            return e.code or 0
        error, line, code = e, f"error: {e.code}", 1
    except (UsageError, InputError) as e:
        error, line, code = e, f"error: {e}", e.exit_code
    except OSError as e:  # any operating-system error: read-only, disk full, not empty, ...
        error, line, code = e, f"error: {os_error_line(e)}", 1
    except KeyboardInterrupt as e:
        error, line, code = e, "interrupted", 130
    else:
        return result if isinstance(result, int) else 0
    if "--debug" in args:
        raise error
    print(f"{prog}: {line}", file=sys.stderr)
    return code


# ---------------------------------------------------------------- argparse value types
def _number(kind, low=None, high=None, low_open=False, high_open=False, what="", also=()):
    """argparse type: a ``kind`` (int/float) in [low, high] (open ends as asked), finite, or one
    of the special values ``also`` (e.g. -1 = "no limit")."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value in also:
            return value
        if not math.isfinite(value) or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and (value >= high if high_open else value > high)):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in its own messages
    return parse


positive_int = _number(int, 1, what="an integer >= 1")
nonnegative_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0.0, low_open=True, what="a number > 0")
nonnegative_float = _number(float, 0.0, what="a number >= 0")
probability = _number(float, 0.0, 1.0, what="a number in [0, 1]")
fraction = _number(float, 0.0, 1.0, high_open=True, what="a number in [0, 1)")


def int_at_least(low: int):
    """argparse type: an integer >= ``low``."""
    return _number(int, low, what=f"an integer >= {low}")


def positive_int_or(special: int, meaning: str):
    """argparse type: an integer >= 1, or ``special`` (e.g. -1 meaning "use --epochs")."""
    return _number(int, 1, also=(special,), what=f"an integer >= 1, or {special} ({meaning})")


def device(text: str):
    """argparse type: a torch device string (cpu, cuda, cuda:1, mps, ...) this machine has;
    ``auto`` passes through for the caller to resolve."""
    import torch

    if text == "auto":
        return text
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"must be a device such as cpu, cuda or cuda:0, got {text!r}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r}: no CUDA device here (torch.cuda.is_available() is False)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise argparse.ArgumentTypeError(f"{text!r}: this machine has {torch.cuda.device_count()} CUDA devices")
    return text
