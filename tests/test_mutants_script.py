"""scripts/mutants.py: mutants of a module run against its tests; the survivors named; the module
left as it was."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "mutants.py"
MODULE = '''def clamp(x: int, hi: int) -> int:
    """At most hi."""
    if x > hi:
        return hi
    return x
'''
TESTS = """from calc import clamp


def test_clamp() -> None:
    assert clamp(5, 3) == 3
    assert clamp(1, 3) == 1
"""


def _repo(tmp_path: Path) -> Path:
    (tmp_path / "calc.py").write_text(MODULE)
    (tmp_path / "test_calc.py").write_text(TESTS)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "."], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "calc"], cwd=tmp_path, check=True)
    return tmp_path


def _run(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, str(SCRIPT), *args]
    return subprocess.run(command, cwd=repo, capture_output=True, text=True, timeout=120, check=False)


def test_the_untested_boundary_survives_and_the_module_is_put_back(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    done = _run(repo, "calc.py", "test_calc.py", "--json", "out.json")
    assert done.returncode == 0, done.stderr
    outcomes = json.loads((repo / "out.json").read_text())
    # the condition negated, `x > hi` turned, each return replaced by None
    assert [(o["kind"], o["line"]) for o in outcomes] == [
        ("negate", 3),
        ("compare", 3),
        ("return", 4),
        ("return", 5),
    ]
    # `x >= hi` gives the same answers: no test can tell, and the tool says it survived
    assert [(o["kind"], o["survived"]) for o in outcomes if o["survived"]] == [("compare", True)]
    assert "1 of 4 mutants survived" in done.stdout
    assert "3: if x > hi:" in done.stdout
    assert (repo / "calc.py").read_text() == MODULE


def test_tests_that_fail_without_a_mutant_are_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "test_broken.py").write_text("def test_broken() -> None:\n    assert False\n")
    done = _run(repo, "calc.py", "test_broken.py")
    assert done.returncode == 2
    assert "without any mutant" in done.stderr


def test_a_module_with_uncommitted_changes_is_refused(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    (repo / "calc.py").write_text(MODULE + "\n# edited\n")
    done = _run(repo, "calc.py", "test_calc.py")
    assert done.returncode == 2
    assert "uncommitted changes" in done.stderr
    assert (repo / "calc.py").read_text() == MODULE + "\n# edited\n"


def test_lines_limits_the_run_to_the_mutants_on_those_lines(tmp_path: Path) -> None:
    repo = _repo(tmp_path)
    done = _run(repo, "calc.py", "test_calc.py", "--lines", "4-5", "--json", "out.json")
    assert done.returncode == 0, done.stderr
    outcomes = json.loads((repo / "out.json").read_text())
    # numbered as in a whole run, so --only takes them as they are
    assert [(o["index"], o["line"]) for o in outcomes] == [(2, 4), (3, 5)]
    refused = _run(repo, "calc.py", "test_calc.py", "--lines", "5-4")
    assert refused.returncode == 2
    assert "expected FIRST-LAST" in refused.stderr
