"""minijarvis.errors: argparse value types and run_main's one-line errors with exit statuses."""
import argparse

import pytest

from minijarvis.errors import InputError, UsageError, positive_float, positive_int, probability, run_main


def _parser():
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--n", type=positive_int)
    p.add_argument("--lr", type=positive_float)
    p.add_argument("--p", type=probability)
    return p


@pytest.mark.parametrize("argv", [["--n", "0"], ["--n", "1.5"], ["--lr", "0"], ["--lr", "nan"],
                                  ["--p", "1.01"], ["--p", "-0.1"]])
def test_bad_value_is_a_usage_error_naming_the_flag(argv, capsys):
    with pytest.raises(SystemExit) as e:
        _parser().parse_args(argv)
    assert e.value.code == 2
    assert f"argument {argv[0]}: must be" in capsys.readouterr().err


def test_good_values_parse():
    args = _parser().parse_args(["--n", "3", "--lr", "1e-3", "--p", "0"])
    assert (args.n, args.lr, args.p) == (3, 1e-3, 0.0)


@pytest.mark.parametrize("exc, code", [(UsageError("bad combo"), 2), (InputError("f.json: not JSON"), 1),
                                       (FileNotFoundError("no such file: f"), 1)])
def test_run_main_one_line_and_status(exc, code, capsys):
    def main(argv):
        raise exc
    assert run_main(main, "prog", []) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("prog: error: ") and "Traceback" not in err


def test_run_main_debug_shows_the_traceback():
    def main(argv):
        raise InputError("boom")
    with pytest.raises(InputError):
        run_main(main, "prog", ["--debug"])


def test_run_main_passes_the_exit_code_through():
    assert run_main(lambda argv: 3, "prog", []) == 3
    assert run_main(lambda argv: {"a": 1}, "prog", []) == 0
