"""Numbers typed on the command line: a bad one is a usage error naming the flag (exit 2), never a
traceback, a NaN carried into the output or a negative period taken at face value."""

from __future__ import annotations

import argparse

import pytest

from water_edge.agent.cli import main
from water_edge.core.cli_numbers import number, whole

WAV = "x.wav"  # never opened: the arguments are refused first


@pytest.mark.parametrize(
    ("argv", "flag", "expected"),
    [
        (["models", "score", "leak", WAV, "--check-s", "inf"], "--check-s", "a number from 4"),
        (["models", "score", "leak", WAV, "--check-s", "0"], "--check-s", "a number from 4"),
        (["models", "score", "leak", WAV, "--diameter", "nan"], "--diameter", "a number from 10 to 3000"),
        (["models", "calibrate", "leak", WAV, "--diameter", "-150"], "--diameter", "a number from 10"),
        (["models", "locate", WAV, "--distance", "9", "--material", "pvc", "--offset-s", "nan"],
         "--offset-s", "a number"),
        (["models", "score", "flow-leak", "--csv", "f.csv", "--flow", "q", "--calibrate-days", "7",
          "--average-minutes", "inf"], "--average-minutes", "a number from 1 to 240"),
        (["models", "score", "flow-leak", "--csv", "f.csv", "--flow", "q", "--calibrate-days", "7",
          "--average-minutes", "0"], "--average-minutes", "a number from 1 to 240"),
        (["models", "score", "flow-leak", "--csv", "f.csv", "--flow", "q", "--calibrate-days", "7",
          "--fixed-rise-pct", "-10"], "--fixed-rise-pct", "a number above 0 up to 500"),
        (["models", "score", "flow-leak", "--csv", "f.csv", "--flow", "q", "--calibrate-days", "7",
          "--min-added-pct", "nan"], "--min-added-pct", "a number above 0 up to 100"),
        (["ca", "init", "--dir", "ca", "--name", "T", "--days", "-1"], "--days", "a whole number from 1"),
        (["ca", "init", "--dir", "ca", "--name", "T", "--days", "0"], "--days", "a whole number from 1"),
        (["ca", "sign-command", "--dir", "ca", "--key-id", "op", "--type", "ping", "--target", "s/g",
          "--ttl", "-5"], "--ttl", "a whole number from 1"),
        (["probe", "--listen", "-3"], "--listen", "a number above 0"),
    ],
)  # fmt: skip
def test_a_bad_number_is_a_usage_error_naming_the_flag(
    argv: list[str], flag: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: expected {expected}" in err, err
    assert "Traceback" not in err


def test_the_types_take_what_they_say_and_refuse_the_rest() -> None:
    assert number(10, 3000)("152.4") == 152.4
    assert number(above=0)("1e-3") == 0.001
    assert whole(1, 65535)(" 8883 ") == 8883
    for parse, bad in [
        (number(10, 3000), "3000.5"),
        (number(above=0), "0"),
        (number(), "-inf"),
        (number(), "1,5"),
        (whole(1), "1.5"),
        (whole(1, 65535), "65536"),
    ]:
        with pytest.raises(argparse.ArgumentTypeError, match=f"got '{bad}'"):
            parse(bad)
