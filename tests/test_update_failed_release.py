"""A release that failed its health check is never a rollback target, and a rollback by hand is
judged like an update (docs/updates.md, "A failed release, and a rollback by hand").

Found by the lifecycle walk: after a broken 0.2.0 was rolled back automatically, `previous` named
0.2.0, and the documented `edge-agent update rollback` ("back to the previous release now") put the
gateway on it, with no health check: the agent crash-looped with nothing to bring it back.

The root updater runs for real in a temporary A/B layout (`Gateway`, as the minimum-version tests
have it), on signed bundles spooled as the agent spools them. A status socket answers as the agent
of whichever release `current` names, except releases that "do not start": those never answer.
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from tests.support.testing import write_agent_config
from tests.support.update_agents import release_agents
from tests.test_update_min_version import Gateway
from water_edge.agent.cli import main
from water_edge.agent.remote.audit import read_audit
from water_edge.agent.update.layout import Release
from water_edge.agent.update.report import update_health
from water_edge.agent.update.state import UpdateState


def _link(gateway: Gateway, name: str) -> str | None:
    release = gateway.layout.release(gateway.root / name)
    return None if release is None else release.name


def _on_010_with_previous_009(tmp: Path) -> Gateway:
    gateway = Gateway(tmp, running="0.1.0")
    gateway.release("0.0.9", "0.0.9-older")
    (gateway.root / "previous").symlink_to("releases/0.0.9-older")
    return gateway


def test_after_an_automatic_rollback_previous_is_what_it_was_and_the_failed_release_is_remembered(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The walk's reproduction: a 0.2.0 that raises at start, rolled back by its health check; then
    the documented rollback by hand. It used to switch to 0.2.0 (`previous`), unjudged."""
    gateway = _on_010_with_previous_009(tmp_path)
    sha = gateway.bundle("0.2.0")
    bad = f"0.2.0-{sha[:8]}"
    with release_agents(gateway.root, broken={bad}) as status:
        state = gateway.run(status)
        assert state.phase == "rolled_back", state
        assert state.reason == (
            "health check failed within 1 s: no answer on the status socket (not running yet, or crashing)"
        )
        assert (_link(gateway, "current"), _link(gateway, "previous")) == ("0.1.0-running", "0.0.9-older")
        assert (
            "rolled back to 0.1.0-running (previous is 0.0.9-older again); restarting the agent" in state.log
        )
        failed = gateway.layout.failed_releases()
        assert list(failed) == [bad]
        assert (failed[bad]["version"], failed[bad]["reason"], failed[bad]["update"]) == (
            "0.2.0",
            state.reason,
            sha,
        )

        # `update status` and `status` say so, and name the right rollback target.
        where = ["-c", str(gateway.config), "--state-dir", str(tmp_path / "state")]
        assert main(["update", "status", *where]) == 0
        out = capsys.readouterr().out
        assert "previous 0.0.9-older" in out
        assert f"failed   {bad}: health check failed within 1 s: " in out
        (line,) = update_health("0.1.0", gateway.files, gateway.layout).status_lines()
        assert line.startswith(
            "update   running 0.1.0  previous 0.0.9  last update 0.2.0: rolled back (health"
        )
        assert line.endswith("; marked failed, no rollback target"), line

        # The rollback by hand goes to the release before, judged, and it passes.
        gateway.rollback_request()
        state = gateway.run(status)
    assert (state.action, state.phase) == ("rollback", "rolled_back"), state
    assert state.reason == "rolled back by hand (edge-agent update rollback by tech)"
    assert (state.from_version, state.to_version) == ("0.1.0", "0.0.9")
    assert (_link(gateway, "current"), _link(gateway, "previous")) == ("0.0.9-older", "0.1.0-running")


def test_with_no_release_before_the_failed_attempt_there_is_no_rollback_target(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, running="0.1.0")
    gateway.bundle("0.2.0")
    assert gateway.run().phase == "rolled_back"  # no agent answers at all
    assert _link(gateway, "current") == "0.1.0-running"
    assert not (gateway.root / "previous").exists()
    gateway.rollback_request()
    state = gateway.run()
    assert (state.phase, state.reason) == ("failed", "no previous release to roll back to")
    assert _link(gateway, "current") == "0.1.0-running"


def test_a_rollback_by_hand_to_a_release_that_failed_its_health_check_is_refused(tmp_path: Path) -> None:
    """A gateway an older updater rolled back still has `previous` on the failed release, and only
    its last state.json (without the fields of this release) to say it failed."""
    gateway = Gateway(tmp_path, running="0.1.0")
    gateway.release("0.2.0", "0.2.0-badbad00")
    (gateway.root / "previous").symlink_to("releases/0.2.0-badbad00")
    old = {"id": "b" * 64, "phase": "rolled_back", "action": "apply", "requested_by": "command c7 from ops",
           "from_release": "0.1.0-running", "to_release": "0.2.0-badbad00", "from_version": "0.1.0",
           "to_version": "0.2.0", "started_ns": 1, "trial_deadline_ns": 2, "finished_ns": 3,
           "reason": "health check failed within 45 s: no answer on the status socket",
           "health_window_s": 45.0, "baseline": None, "log": []}  # fmt: skip
    (tmp_path / "state" / "update" / "state.json").write_bytes(orjson.dumps(old))
    assert gateway.files.read_state().previous_before is None  # an old state file still loads

    gateway.rollback_request()
    state = gateway.run()
    assert (state.action, state.phase) == ("rollback", "failed"), state
    assert state.reason == (
        "refused: the previous release 0.2.0-badbad00 failed its health check in the last update: health "
        "check failed within 45 s: no answer on the status socket; nothing was switched. To try it again, "
        "apply its bundle (`edge-agent update apply`, or a signed `update`): it is then judged and rolled "
        "back like any update"
    )
    assert _link(gateway, "current") == "0.1.0-running"

    # Refused again later on (by the record in the install root, whatever state.json says since).
    gateway.layout.mark_failed(
        gateway.layout.release(gateway.root / "previous"),  # type: ignore[arg-type]
        {"reason": "health check failed within 45 s: …", "failed_ns": 1_796_000_000_000_000_000},
    )
    gateway.rollback_request()
    state = gateway.run()
    assert state.phase == "failed"
    assert state.reason is not None
    assert state.reason.startswith(
        "refused: the previous release 0.2.0-badbad00 failed its health check at 2026-11-30 00:53:20 UTC: "
        "health check failed within 45 s: …; "
    ), state.reason
    assert _link(gateway, "current") == "0.1.0-running"


def test_a_rollback_by_hand_to_a_release_that_no_longer_starts_returns_to_the_release_it_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The previous release's virtualenv lost what it needs (say, a library removed from the
    system): rolled back to by hand, it does not start. The gateway goes back to the release it
    left, and the one that does not start is no rollback target any more."""
    gateway = Gateway(tmp_path, running="0.2.0")
    gateway.release("0.1.0", "0.1.0-gone")
    (gateway.root / "previous").symlink_to("releases/0.1.0-gone")
    restarts = tmp_path / "restarts"
    (tmp_path / "cli").mkdir()
    with release_agents(gateway.root, broken={"0.1.0-gone"}) as status:
        config = write_agent_config(
            tmp_path / "cli", status_socket=status,
            extra=f'[update]\nroot = "{gateway.root}"\nrelease_keys = "{gateway.keys}"\n',
        )  # fmt: skip
        argv = ["update", "rollback", "-c", str(config), "--state-dir", str(tmp_path / "state"), "--now"]
        argv += ["--restart-command", f"sh -c 'echo x >> {restarts}'", "--health-window", "2"]
        assert main(argv) != 0
    out = capsys.readouterr().out
    state = gateway.files.read_state()
    assert (state.action, state.phase) == ("rollback", "failed"), state
    assert state.reason == (
        "the rollback to 0.1.0-gone failed: health check failed within 2 s: no answer on the status socket "
        "(not running yet, or crashing); returned to 0.2.0-running, the release it rolled back from "
        "(0.1.0-gone is marked failed)"
    )
    assert state.reason in out
    assert _link(gateway, "current") == "0.2.0-running"
    assert not (gateway.root / "previous").exists()
    assert restarts.read_text().count("x") == 2  # into the rollback, and back out of it
    assert list(gateway.layout.failed_releases()) == ["0.1.0-gone"]
    outcomes = [(a["outcome"], a.get("to")) for a in read_audit(tmp_path / "state" / "audit.log")]
    assert outcomes == [("switched", "0.1.0"), ("failed", "0.1.0")]


def test_a_rollback_by_hand_cut_off_by_a_power_cut_is_judged_at_boot(tmp_path: Path) -> None:
    gateway = Gateway(tmp_path, running="0.2.0")
    gateway.release("0.1.0", "0.1.0-older")
    (gateway.root / "current").unlink()
    (gateway.root / "current").symlink_to("releases/0.1.0-older")
    (gateway.root / "previous").symlink_to("releases/0.2.0-running")
    gateway.files.write_state(
        UpdateState(id="rollback-1", phase="trial", action="rollback", from_release="0.2.0-running",
                    to_release="0.1.0-older", from_version="0.2.0", to_version="0.1.0", started_ns=1,
                    health_window_s=1.0, previous_before="0.1.0-older", requested_by="tech")
    )  # fmt: skip
    with release_agents(gateway.root) as status:
        state = gateway.run(status)
    assert (state.phase, state.reason) == ("rolled_back", "rolled back by hand (tech)"), state
    assert (_link(gateway, "current"), _link(gateway, "previous")) == ("0.1.0-older", "0.2.0-running")
    assert not gateway.layout.failed.exists()


def test_a_trial_an_older_updater_recorded_never_leaves_the_failed_release_as_previous(
    tmp_path: Path,
) -> None:
    """The updater of the release on trial resumes it at boot: a trial recorded by the old release's
    updater has no `previous_before`. The failed release is not left as the rollback target: none is."""
    gateway = Gateway(tmp_path, running="0.1.0")
    gateway.release("0.2.0", "0.2.0-newnew00")
    (gateway.root / "current").unlink()
    (gateway.root / "current").symlink_to("releases/0.2.0-newnew00")
    (gateway.root / "previous").symlink_to("releases/0.1.0-running")
    old = {"id": "c" * 64, "phase": "trial", "action": "apply", "from_release": "0.1.0-running",
           "to_release": "0.2.0-newnew00", "from_version": "0.1.0", "to_version": "0.2.0", "started_ns": 1,
           "health_window_s": 1.0, "baseline": None, "log": []}  # fmt: skip
    (tmp_path / "state" / "update" / "state.json").write_bytes(orjson.dumps(old))
    state = gateway.run()  # nothing answers
    assert state.phase == "rolled_back", state
    assert _link(gateway, "current") == "0.1.0-running"
    assert not (gateway.root / "previous").exists()
    assert list(gateway.layout.failed_releases()) == ["0.2.0-newnew00"]


def test_a_failed_release_is_tried_again_only_by_an_explicit_apply(tmp_path: Path) -> None:
    """Its bundle sent again, on purpose: judged like any update, and kept once it passes (what it
    failed on was outside it: a device, a broker), which forgets that it failed."""
    gateway = Gateway(tmp_path, running="0.1.0")
    sha = gateway.bundle("0.2.0")
    bad = f"0.2.0-{sha[:8]}"
    assert gateway.run().phase == "rolled_back"
    assert list(gateway.layout.failed_releases()) == [bad]

    gateway.files.spool.joinpath(f"{sha}.tar").write_bytes((tmp_path / "agent-0.2.0.tar").read_bytes())
    gateway.files.write_request(
        {"action": "apply", "bundle": str(gateway.files.spool / f"{sha}.tar"), "sha256": sha,
         "requested_by": "command c9 from release-ops", "health_window_s": 1.0}
    )  # fmt: skip
    with release_agents(gateway.root) as status:
        state = gateway.run(status)
    assert state.phase == "committed", state
    assert f"{bad} failed its health check before: tried again as asked, judged as any update" in state.log
    assert (_link(gateway, "current"), _link(gateway, "previous")) == (bad, "0.1.0-running")
    assert gateway.layout.failed_releases() == {}
    assert not gateway.layout.failed.exists()


def _on_trial_of_a_release_marked_failed(tmp: Path, *, reason: str, started_ns: int) -> Gateway:
    """On 0.1.0, an update `d…d` to 0.2.0-newnew00 on trial, cut off by a power cut; the release is
    marked failed by that update at 2 ns (`reason`). A trial that `started_ns` before then is the
    attempt that marked it; one started later is a retry, the mark an earlier attempt's."""
    gateway = Gateway(tmp, running="0.1.0")
    gateway.release("0.2.0", "0.2.0-newnew00")
    gateway.layout.mark_failed(
        Release("0.2.0-newnew00", gateway.root / "releases" / "0.2.0-newnew00", "0.2.0"),
        {"reason": reason, "failed_ns": 2, "update": "d" * 64},
    )
    gateway.files.write_state(
        UpdateState(id="d" * 64, phase="trial", from_release="0.1.0-running", to_release="0.2.0-newnew00",
                    from_version="0.1.0", to_version="0.2.0", started_ns=started_ns, health_window_s=1.0,
                    previous_before="")
    )  # fmt: skip
    return gateway


def test_a_power_cut_after_the_switch_back_ends_rolled_back_not_nothing_switched(tmp_path: Path) -> None:
    gateway = _on_trial_of_a_release_marked_failed(
        tmp_path, reason="health check failed within 1 s: no answer on the status socket", started_ns=1
    )
    state = gateway.run()
    assert (state.phase, state.reason) == (
        "rolled_back",
        "health check failed within 1 s: no answer on the status socket (interrupted after the switch back)",
    ), state
    assert _link(gateway, "current") == "0.1.0-running"


def test_a_power_cut_before_the_switch_of_a_retried_failed_release_switched_nothing(tmp_path: Path) -> None:
    """The same bundle sent again after it failed once: its record is the earlier attempt's."""
    gateway = _on_trial_of_a_release_marked_failed(
        tmp_path, reason="health check failed within 1 s: …", started_ns=5
    )
    state = gateway.run()
    assert (state.phase, state.reason) == ("failed", "interrupted before the switch; nothing was switched")
