"""How every entry point reports bad input: one line, a fitting exit status, no traceback.

* A bad flag value is a **usage error** (exit status 2): argparse types below reject it at
  start-up with one line naming the flag and what is allowed, e.g.
  ``train.py: error: argument --batch-size: must be an integer >= 1, got '0'``.
* An unusable file (missing, invalid JSON, not a checkpoint, ...) or any other failure the
  user can fix is an :class:`InputError` (exit status 1): one line naming the file and the
  problem. Raise it (or :class:`UsageError` for a combination of flags that argparse cannot
  check) anywhere below ``main``; :func:`run_main` turns it into that line.
* ``--debug`` (every entry point has it; :func:`add_debug_flag`) shows the traceback instead.

Use in an entry point::

    if __name__ == "__main__":
        sys.exit(run_main(main, prog="train.py"))
"""
from __future__ import annotations

import argparse
import sys


class UsageError(Exception):
    """Flags that cannot work together (exit status 2)."""

    exit_code = 2


class InputError(Exception):
    """A file or value the run cannot use (exit status 1). The message names the file."""

    exit_code = 1


def add_debug_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the full Python traceback on errors")


def run_main(main, prog: str, argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; turn a UsageError / InputError / known file error into one line on
    stderr and its exit status, unless ``--debug`` is among the arguments."""
    args = sys.argv[1:] if argv is None else argv
    if "--debug" in args:
        result = main(argv)
        return result if isinstance(result, int) else 0
    try:
        result = main(argv)
    except (UsageError, InputError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return e.exit_code
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    return result if isinstance(result, int) else 0


# ---------------------------------------------------------------- argparse value types
def _number(kind, low=None, high=None, low_open=False, what=""):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if value != value or (low is not None and (value <= low if low_open else value < low)) or (
                high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}")
        return value
    parse.__name__ = what  # argparse names the type in its own messages
    return parse


positive_int = _number(int, 1, what="an integer >= 1")
nonnegative_int = _number(int, 0, what="an integer >= 0")
positive_float = _number(float, 0.0, low_open=True, what="a number > 0")
nonnegative_float = _number(float, 0.0, what="a number >= 0")
probability = _number(float, 0.0, 1.0, what="a number in [0, 1]")


def int_at_least(low: int):
    """argparse type: an integer >= ``low``."""
    return _number(int, low, what=f"an integer >= {low}")
