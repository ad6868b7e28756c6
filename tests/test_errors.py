"""minijarvis.errors: argparse value types and run_main's one-line errors with exit statuses."""
import argparse

import pytest

from minijarvis.errors import (ArgumentParser, InputError, UsageError, fraction, positive_float, positive_int,
                               positive_int_or, probability, run_main)


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


@pytest.mark.parametrize("kind, text, ok", [(fraction, "0", True), (fraction, "0.99", True), (fraction, "1", False),
                                            (positive_float, "inf", False), (positive_float, "1e-9", True),
                                            (positive_int_or(-1, "none"), "-1", True),
                                            (positive_int_or(-1, "none"), "0", False),
                                            (positive_int_or(-1, "none"), "-2", False),
                                            (positive_int_or(-1, "none"), "5", True)])
def test_value_types_accept_exactly_their_range(kind, text, ok):
    if ok:
        assert kind(text) == float(text)
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="must be"):
            kind(text)


def test_argument_parser_errors_are_one_line_with_status_2(capsys):
    p = ArgumentParser(prog="x")
    p.add_argument("--n", type=positive_int)
    p.add_argument("--name", required=True)
    assert run_main(lambda argv: p.parse_args(argv), "x", ["--n", "0", "--name", "a"]) == 2
    assert run_main(lambda argv: p.parse_args(argv), "x", ["--n", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and err[0].startswith("x: error: argument --n: must be") and "--name" in err[1]


def test_run_main_turns_a_text_system_exit_into_one_line_status_1(capsys):
    def main(argv):
        raise SystemExit("no GPU here")
    assert run_main(main, "prog", []) == 1
    assert capsys.readouterr().err == "prog: error: no GPU here\n"
