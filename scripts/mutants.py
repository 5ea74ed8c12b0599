"""Do the tests fail when the code is wrong? Mutation testing of one module against chosen tests.

    .venv/bin/python scripts/mutants.py buffer/outbox.py tests/test_buffer_*.py \
        [--only 12,40] [--lines 80-140] [--json F]

Each mutant is one small change to the module's syntax tree: a comparison turned (`<` to `<=`,
`==` to `!=`, `in` to `not in`), `and` to `or`, an integer or boolean constant changed, `+` to
`-`, an `if`/`while` condition negated, a call statement or an augmented assignment removed, a
returned value replaced by None (or a returned boolean flipped). Logging calls and docstrings are
left alone. The tests must pass first; then they run against each mutant (`pytest -x`). A mutant
they pass *survived*: either the change makes no difference a user could see (a tunable constant,
an equivalent form), or no test asserts what that line is for. The survivors are printed at the
end with their lines, to read.

The module is rewritten in place and put back afterwards (also on Ctrl-C or SIGTERM): the tool refuses a
module with uncommitted changes, so `git checkout -- MODULE` always restores it. Do not edit or
test that checkout while it runs. A mutant that hangs the tests is stopped after `--timeout`
seconds and counts as killed.
"""

from __future__ import annotations

import argparse
import ast
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

_TURNED: dict[type[ast.cmpop], type[ast.cmpop]] = {
    ast.Lt: ast.LtE,
    ast.LtE: ast.Lt,
    ast.Gt: ast.GtE,
    ast.GtE: ast.Gt,
    ast.Eq: ast.NotEq,
    ast.NotEq: ast.Eq,
    ast.In: ast.NotIn,
    ast.NotIn: ast.In,
    ast.Is: ast.IsNot,
    ast.IsNot: ast.Is,
}
_ARITHMETIC: dict[type[ast.operator], type[ast.operator]] = {
    ast.Add: ast.Sub,
    ast.Sub: ast.Add,
    ast.Mult: ast.Div,
    ast.Div: ast.Mult,
    ast.FloorDiv: ast.Mult,
}
_LOGGING = frozenset(("debug", "info", "warning", "error", "exception", "critical"))


@dataclass(frozen=True)
class Site:
    kind: str
    line: int


@dataclass(frozen=True)
class Outcome:
    index: int
    kind: str
    line: int
    survived: bool
    seconds: float


def _is_logging(statement: ast.Expr) -> bool:
    call = statement.value.value if isinstance(statement.value, ast.Await) else statement.value
    return isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute) and call.func.attr in _LOGGING


def _returns_none(value: ast.expr) -> bool:
    return isinstance(value, ast.Constant) and value.value is None


def _mutable(tree: ast.AST) -> list[tuple[ast.AST, str, int]]:
    """(node, kind, operand index) for every place one mutation applies, in source order."""
    found = list(_candidates(tree))
    return sorted(found, key=lambda f: (getattr(f[0], "lineno", 0), getattr(f[0], "col_offset", 0), f[2]))


def _candidates(tree: ast.AST) -> Iterator[tuple[ast.AST, str, int]]:
    # Only int and bool constants and call statements are touched: docstrings never are.
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            yield from ((node, "compare", i) for i, op in enumerate(node.ops) if type(op) in _TURNED)
        elif isinstance(node, ast.BoolOp):
            yield node, "and/or", 0
        elif isinstance(node, ast.Constant) and type(node.value) in (int, bool):
            yield node, "constant", 0
        elif isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
            yield node, "arithmetic", 0
        elif isinstance(node, ast.If | ast.While):
            yield node, "negate", 0
        elif isinstance(node, ast.Expr) and isinstance(node.value, ast.Call | ast.Await):
            if not _is_logging(node):
                yield node, "remove", 0
        elif isinstance(node, ast.AugAssign):
            yield node, "remove", 0
        elif isinstance(node, ast.Return) and node.value is not None and not _returns_none(node.value):
            yield node, "return", 0


def sites(source: str) -> list[Site]:
    return [Site(kind, getattr(node, "lineno", 0)) for node, kind, _ in _mutable(ast.parse(source))]


def mutate(source: str, index: int) -> str:
    """The module's source with mutation `index` applied (comments are not kept)."""
    tree = ast.parse(source)
    node, _, operand = _mutable(tree)[index]
    if isinstance(node, ast.Compare):
        node.ops[operand] = _TURNED[type(node.ops[operand])]()
    elif isinstance(node, ast.BoolOp):
        node.op = ast.Or() if isinstance(node.op, ast.And) else ast.And()
    elif isinstance(node, ast.Constant):
        value = node.value
        node.value = (
            (not value) if isinstance(value, bool) else value + 1 if isinstance(value, int) else value
        )
    elif isinstance(node, ast.BinOp):
        node.op = _ARITHMETIC[type(node.op)]()
    elif isinstance(node, ast.If | ast.While):
        node.test = ast.UnaryOp(op=ast.Not(), operand=node.test)
    elif isinstance(node, ast.Expr | ast.AugAssign):
        replacement = ast.Pass()
        ast.copy_location(replacement, node)
        _replace(tree, node, replacement)
    elif isinstance(node, ast.Return):
        returned = node.value
        if isinstance(returned, ast.Constant) and isinstance(returned.value, bool):
            node.value = ast.Constant(value=not returned.value)
        else:
            node.value = ast.Constant(value=None)
    return ast.unparse(ast.fix_missing_locations(tree))


def _replace(tree: ast.AST, old: ast.stmt, new: ast.stmt) -> None:
    for parent in ast.walk(tree):
        for field in ("body", "orelse", "finalbody", "handlers"):
            statements = getattr(parent, field, None)
            if isinstance(statements, list) and any(s is old for s in statements):
                statements[next(i for i, s in enumerate(statements) if s is old)] = new
                return
    raise ValueError("statement not found")


def _uncommitted(path: Path) -> bool:
    status = subprocess.run(
        ["git", "status", "--porcelain", "--", str(path)], capture_output=True, text=True, check=True
    )
    return bool(status.stdout.strip())


def _tests_pass(tests: list[str], timeout_s: float) -> bool:
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests],
            capture_output=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


def run(
    module: Path, tests: list[str], only: set[int] | None, lines: range | None, timeout_s: float
) -> list[Outcome]:
    source = module.read_text(encoding="utf-8")
    found = sites(source)
    print(f"{module}: {len(found)} mutants", flush=True)
    outcomes: list[Outcome] = []
    try:
        for index, site in enumerate(found):
            if (only is not None and index not in only) or (lines is not None and site.line not in lines):
                continue
            module.write_text(mutate(source, index), encoding="utf-8")
            started = time.monotonic()
            survived = _tests_pass(tests, timeout_s)
            outcome = Outcome(index, site.kind, site.line, survived, round(time.monotonic() - started, 1))
            outcomes.append(outcome)
            verdict = "SURVIVED" if survived else "killed"
            print(f"{index:4d} line {site.line:4d} {site.kind:10s} {verdict}", flush=True)
    finally:
        module.write_text(source, encoding="utf-8")
    return outcomes


def _line_range(text: str) -> range:
    first, sep, last = text.partition("-")
    if not (sep and first.isdigit() and last.isdigit() and 0 < int(first) <= int(last)):
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST, line numbers from 1, got {text!r}")
    return range(int(first), int(last) + 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("module", type=Path)
    parser.add_argument("tests", nargs="+", help="pytest arguments: test files, -k expressions")
    parser.add_argument("--only", help="comma-separated mutant numbers (from an earlier run)")
    parser.add_argument("--lines", type=_line_range, help="only mutants on lines FIRST-LAST (inclusive)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per test run")
    parser.add_argument("--json", type=Path, help="write every outcome here")
    args = parser.parse_args(argv)
    if _uncommitted(args.module):
        print(f"{args.module} has uncommitted changes: commit them first", file=sys.stderr)
        return 2
    if not _tests_pass(args.tests, args.timeout):
        # Every mutant would count as killed.
        print("the tests fail (or time out) without any mutant: fix them first", file=sys.stderr)
        return 2
    only = None if args.only is None else {int(i) for i in args.only.split(",")}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # unwinds through the restore
    outcomes = run(args.module, args.tests, only, args.lines, args.timeout)
    if args.json is not None:
        args.json.write_text(json.dumps([asdict(o) for o in outcomes], indent=1), encoding="utf-8")
    lines = args.module.read_text(encoding="utf-8").splitlines()
    survivors = [o for o in outcomes if o.survived]
    print(f"\n{len(survivors)} of {len(outcomes)} mutants survived:")
    for o in survivors:
        print(f"{o.index:4d} {o.kind:10s} {o.line:4d}: {lines[o.line - 1].strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
