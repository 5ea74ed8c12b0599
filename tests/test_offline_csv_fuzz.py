"""Mangled history files never crash the offline commands an engineer runs on site exports:
`models score pump`, `models score flow-leak` and `models score burst` end with a result or one
clear error (exit 0, 1 or 2), whatever was cut, doubled, garbled or re-encoded in the file."""

from __future__ import annotations

import contextlib
import io
import math
import random
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from water_edge.agent.cli import main

JUNK = [
    "",
    "NaN",
    "inf",
    "-inf",
    "1e400",
    "abc",
    '"1,5"',
    "  ",
    "1.2.3",
    "\x00",
    "1,5",
    "0x10",
    "+",
    "-0",
    '"',
]


def _pump_lines() -> list[str]:
    rng = random.Random(1)
    lines = ["datetime;Accelerometer1RMS;Current;Pressure;Temperature;Volume Flow RateRMS;anomaly"]
    for i in range(500):
        stamp = f"2020-03-09 10:{(i // 60) % 60:02d}:{i % 60:02d}"
        values = [
            0.2 + rng.gauss(0, 0.01),
            2 + rng.gauss(0, 0.1),
            0.5,
            70 + rng.gauss(0, 0.3),
            32 + rng.gauss(0, 1),
        ]
        lines.append(";".join([stamp, *(f"{v:.5f}" for v in values), "1" if 420 < i < 470 else "0"]))
    return lines


def _flow_lines() -> list[str]:
    rng = random.Random(2)
    lines = ["time,inflow,outflow,pressure"]
    for day in range(12):
        for minute in range(0, 1440, 30):
            flow = 30 + 20 * math.sin(math.pi * minute / 1440) ** 2 + rng.gauss(0, 1)
            stamp = f"2024-01-{day + 1:02d}T{minute // 60:02d}:{minute % 60:02d}:00"
            lines.append(f"{stamp},{flow:.3f},{rng.gauss(5, 0.2):.3f},{3 + rng.gauss(0, 0.05):.3f}")
    return lines


PUMP, FLOW = _pump_lines(), _flow_lines()

_edit = st.tuples(st.integers(0, 9), st.integers(0, 10**6), st.sampled_from(JUNK), st.text(max_size=30))


def _mangle(lines: list[str], edits: list[tuple[int, int, str, str]], sep: str) -> list[str]:
    out = list(lines)
    for op, where, junk, text in edits:
        if not out:
            break
        i = where % len(out)
        if op == 0:
            del out[i]
        elif op == 1:
            cells = out[i].split(sep)
            cells[where % len(cells)] = junk
            out[i] = sep.join(cells)
        elif op == 2:
            out[i] = out[i][: where % (len(out[i]) + 1)]  # a cut-off line
        elif op == 3:
            out.insert(i, out[i])  # a repeated row (and timestamp)
        elif op == 4:
            out[i] = text
        elif op == 5:
            out[i] += sep
        elif op == 6:
            out = out[: where % 4]  # a file cut after its first lines
        elif op == 7:
            out[0] = "\ufeff" + out[0]
        elif op == 8:
            out[i] = out[i].replace(".", ",")
        else:
            out[1:] = out[1:][::-1]
    return out


def _run(path: Path, lines: list[str], encoding: str, crlf: bool, argv: list[str]) -> None:
    path.write_bytes(("\r\n" if crlf else "\n").join(lines).encode(encoding, errors="replace"))
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse and the commands' own exits
            code = exc.code if isinstance(exc.code, int) else 2
    assert code in (0, 1, 2), (code, err.getvalue()[-500:])
    assert "Traceback" not in err.getvalue()
    if code == 2:
        assert err.getvalue().strip(), "a refusal says why"


FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(
    edits=st.lists(_edit, min_size=1, max_size=6),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
    crlf=st.booleans(),
    options=st.sampled_from([[], ["--label", "anomaly"], ["--explain"], ["--causal"]]),
    rows=st.sampled_from(["100", "400", "0", "5000"]),
)
def test_a_mangled_pump_history_is_scored_or_refused_in_words(
    tmp_path: Path,
    edits: list[tuple[int, int, str, str]],
    encoding: str,
    crlf: bool,
    options: list[str],
    rows: str,
) -> None:
    path = tmp_path / "pump.csv"
    lines = _mangle(PUMP, edits, ";")
    _run(
        path,
        lines,
        encoding,
        crlf,
        ["models", "score", "pump", "--csv", str(path), "--calibrate-rows", rows, *options],
    )


@FUZZ
@given(
    edits=st.lists(_edit, min_size=1, max_size=6),
    encoding=st.sampled_from(["utf-8", "utf-16", "latin-1"]),
    crlf=st.booleans(),
    command=st.sampled_from(
        [
            ["flow-leak", "--calibrate-days", "3"],
            ["flow-leak", "--calibrate-days", "3", "--minus", "outflow", "--pressure", "pressure"],
            ["flow-leak", "--calibrate-days", "30", "--method", "fixed"],
            ["flow-leak", "--calibrate-days", "3", "--volume"],
            ["burst", "--learn-days", "3"],
        ]
    ),
)
def test_a_mangled_district_flow_history_is_scored_or_refused_in_words(
    tmp_path: Path, edits: list[tuple[int, int, str, str]], encoding: str, crlf: bool, command: list[str]
) -> None:
    path = tmp_path / "flow.csv"
    lines = _mangle(FLOW, edits, ",")
    argv = ["models", "score", command[0], "--csv", str(path), "--flow", "inflow", *command[1:]]
    _run(path, lines, encoding, crlf, [*argv, "--timezone", "Europe/Berlin"])
