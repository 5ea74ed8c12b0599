"""`edge-agent update status|rollback|run` work when the live config does not validate, or is not
there at all (docs/updates.md, "On site"; docs/operations.md, Updates).

Found by the docs walk: both refused with the whole "invalid configuration" list (exit 2), even
with `--state-dir`, and without a config file with "cannot read the config file". A technician
facing an agent that a bad config or a bad release keeps restarting could neither see the releases
nor roll back, and the updater service (`update run -c /etc/edge-agent/config.toml`), which carries
out the rollback request, refused the same way. They now take from the config only what they need,
key by key, and say on stderr which keys they took at their defaults.

The root updater runs for real in a temporary A/B layout (`Gateway`, as the minimum-version tests
have it); a status socket answers as the agent of whichever release `current` names.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.update_agents import release_agents
from tests.test_update_min_version import Gateway
from water_edge.agent.cli import main
from water_edge.agent.update.layout import Release


def _on_020_with_previous_010(tmp: Path) -> Gateway:
    gateway = Gateway(tmp, running="0.2.0")
    gateway.release("0.1.0", "0.1.0-older")
    (gateway.root / "previous").symlink_to("releases/0.1.0-older")
    return gateway


def _broken(gateway: Gateway, status_socket: Path | None = None, update_extra: str = "") -> Path:
    """The gateway's config with two mistakes (no schema_version, an unknown key), its [update] as
    it was: what a half-done edit leaves."""
    text = gateway.config.read_text().replace("schema_version = 1\n", "")
    if status_socket is not None:
        text = re.sub(r'(?m)^socket = ".*"$', f'socket = "{status_socket}"', text)
    broken = gateway.tmp / "broken.toml"
    broken.write_text(f"pollling = 5\n{text}".replace("[update]\n", f"[update]\n{update_extra}"))
    return broken


def _release(gateway: Gateway, name: str) -> str | None:
    release: Release | None = gateway.layout.release(gateway.root / name)
    return None if release is None else release.name


def test_update_status_reads_the_releases_from_a_config_that_does_not_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = _on_020_with_previous_010(tmp_path)
    config = _broken(gateway)
    assert main(["check-config", "-c", str(config)]) == 2  # it really is invalid
    capsys.readouterr()

    assert main(["update", "status", "-c", str(config), "--state-dir", str(tmp_path / "state")]) == 0
    out, err = capsys.readouterr()
    # The install root came from the broken file's [update] (the releases are in tmp_path, not /opt).
    assert "current  0.2.0-running" in out
    assert "previous 0.1.0-older" in out
    assert err == (
        f"edge-agent update: the config {config} does not validate (2 problems; `edge-agent check-config "
        f"-c {config}` lists them); the keys this command needs were read from it\n"
    )


def test_a_key_the_command_needs_that_is_itself_invalid_is_named_with_the_default_used(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = _on_020_with_previous_010(tmp_path)
    config = _broken(gateway, update_extra='health_window_s = "soon"\n')
    state = str(tmp_path / "state")
    assert main(["update", "rollback", "-c", str(config), "--state-dir", state]) == 0
    assert capsys.readouterr().err.endswith(
        "; this command needs nothing from it (its options say what it does)\n"
    )

    # The updater itself (what edge-agent-update.service runs) needs the health window.
    with release_agents(gateway.root) as status:
        config = _broken(gateway, status_socket=status, update_extra='health_window_s = "soon"\n')
        argv = ["update", "run", "-c", str(config), "--state-dir", state, "--restart-command", "true"]
        assert main(argv) == 0
    out, err = capsys.readouterr()
    assert err.startswith(f"edge-agent update: the config {config} does not validate (3 problems;")
    assert err.endswith("; not read from it, defaults used: update.health_window_s = 300.0\n")
    assert "update 0.1.0: rolled back: rolled back by hand" in out
    assert (_release(gateway, "current"), _release(gateway, "previous")) == ("0.1.0-older", "0.2.0-running")


def test_a_technician_rolls_back_an_agent_whose_config_does_not_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The walk's case: a restart loop, the config invalid. `update rollback` writes the request and
    the updater service, given the same config, carries it out, health-checked."""
    gateway = _on_020_with_previous_010(tmp_path)
    state = str(tmp_path / "state")
    with release_agents(gateway.root) as status:
        config = _broken(gateway, status_socket=status)
        assert main(["update", "rollback", "-c", str(config), "--state-dir", state]) == 0
        assert gateway.files.request.exists()
        service = [
            "update",
            "run",
            "-c",
            str(config),
            "--root",
            str(gateway.root),
            "--keys",
            str(gateway.keys),
        ]
        assert (
            main([*service, "--state-dir", state, "--restart-command", "true", "--health-window", "2"]) == 0
        )
    out = capsys.readouterr().out
    assert "rollback requested" in out
    assert "update 0.1.0: rolled back: rolled back by hand (edge-agent update rollback by " in out
    assert (_release(gateway, "current"), _release(gateway, "previous")) == ("0.1.0-older", "0.2.0-running")

    assert main(["update", "status", "-c", str(config), "--state-dir", state]) == 0
    out = capsys.readouterr().out
    assert "current  0.1.0-older" in out
    assert "update 0.1.0: rolled back: rolled back by hand" in out


def test_without_a_config_file_update_status_and_rollback_work_from_the_options_and_say_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gateway = _on_020_with_previous_010(tmp_path)
    missing = tmp_path / "etc" / "config.toml"
    state = str(tmp_path / "state")
    assert (
        main(["update", "status", "-c", str(missing), "--state-dir", state, "--root", str(gateway.root)]) == 0
    )
    out, err = capsys.readouterr()
    assert "current  0.2.0-running" in out
    assert err == (
        f"edge-agent update: cannot read the config {missing} (No such file or directory); this command "
        "needs nothing from it (its options say what it does)\n"
    )

    # Without --root the default install root is used, and named.
    assert main(["update", "status", "-c", str(missing), "--state-dir", state]) == 0
    out, err = capsys.readouterr()
    if not Path("/opt/edge-agent/current").exists():  # not on a gateway
        assert "current  (not installed in /opt/edge-agent)" in out
    assert err == (
        f"edge-agent update: cannot read the config {missing} (No such file or directory); not read from "
        "it, defaults used: update.root = /opt/edge-agent\n"
    )

    assert main(["update", "rollback", "-c", str(missing), "--state-dir", state]) == 0
    assert gateway.files.request.exists()
