"""What the offline leak and machine-sound commands do with inputs that do not fit what they were
calibrated on: a check length other than the baseline's, a file shorter than one check, a quiet
night given twice, a clock offset for one stereo recording, clips at another sample rate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.io import wavfile

from tests.support.cli import CliRun, edge_agent
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene
from water_edge.sim.machine_sound import MachineScene, MachineSoundSynth, write_wav

RATE = 8000


def models(*args: str | Path) -> CliRun:
    return edge_agent("models", *map(str, args))


def _write(path: Path, x: npt.NDArray[np.float32], rate: int = RATE) -> Path:
    wavfile.write(path, rate, np.clip(np.round(x * 32767), -32768, 32767).astype(np.int16))
    return path


@pytest.fixture(scope="module")
def quiet(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A quiet PVC main at 8 kHz: 24 s to learn from, 24 s to judge, the first 3 s alone, and a
    2-channel recording of both sensors."""
    d = tmp_path_factory.mktemp("quiet")
    scene = PipeScene("pvc", 152.4, 100.0, None, 1.0, 0.0, BACKGROUNDS, sample_rate=RATE, seed=7)
    x = HydrophoneSynth(scene).render_seconds(48) * 0.05
    return {
        "learn": _write(d / "learn.wav", x[: 24 * RATE, 0]),
        "judge": _write(d / "judge.wav", x[24 * RATE :, 0]),
        "short": _write(d / "short.wav", x[: 3 * RATE, 0]),
        "pair": _write(d / "pair.wav", x[: 10 * RATE]),
    }


def _calibrate(learn: Path, out: Path, *extra: str) -> dict[str, object]:
    run = models("calibrate", "leak", learn, "--material", "pvc", "--out", out, *extra)
    assert run.returncode == 0, run.stderr
    baseline: dict[str, object] = json.loads(out.read_text())
    return baseline


def test_the_baseline_keeps_its_check_length_and_scoring_follows_it(
    quiet: dict[str, Path], tmp_path: Path
) -> None:
    # A baseline's thresholds hold for checks as long as those it was learnt from: it says how long
    # they were, and a score against it cuts its checks to that length unless told otherwise.
    assert _calibrate(quiet["learn"], tmp_path / "b8.json")["check_s"] == 8
    assert _calibrate(quiet["learn"], tmp_path / "b4.json", "--check-s", "4")["check_s"] == 4
    run = models("score", "leak", quiet["judge"], "--baseline", tmp_path / "b4.json")
    assert run.returncode == 0, run.stderr
    checks = json.loads(run.stdout)["evidence"]["checks"]
    assert [c["start_s"] for c in checks] == [0, 4, 8, 12, 16, 20]


def test_scoring_in_other_checks_than_the_baselines_is_refused_naming_both(
    quiet: dict[str, Path], tmp_path: Path
) -> None:
    # Shorter checks against a baseline of longer ones read as a rise that is no sound (the real
    # no-leak recording: 8 of 8 checks positive, "leak": true): no JSON verdict, but why.
    _calibrate(quiet["learn"], tmp_path / "b8.json")
    run = models("score", "leak", quiet["judge"], "--baseline", tmp_path / "b8.json", "--check-s", "4")
    assert run.returncode == 2
    assert run.stdout == ""
    assert f"--check-s 4: {tmp_path / 'b8.json'} was learnt from 8 s checks" in run.stderr
    assert "calibrate again with --check-s 4" in run.stderr
    same = models("score", "leak", quiet["judge"], "--baseline", tmp_path / "b8.json", "--check-s", "8")
    assert same.returncode == 0, same.stderr


def test_a_baseline_written_before_the_check_length_was_kept_is_still_read(
    quiet: dict[str, Path], tmp_path: Path
) -> None:
    old = _calibrate(quiet["learn"], tmp_path / "old.json")
    del old["check_s"]
    (tmp_path / "old.json").write_text(json.dumps(old))
    run = models("score", "leak", quiet["judge"], "--baseline", tmp_path / "old.json", "--check-s", "4")
    assert run.returncode == 0, run.stderr
    assert len(json.loads(run.stdout)["evidence"]["checks"]) == 6
    assert "does not say how long the checks it was learnt from were" in run.stderr


def test_a_check_length_below_the_measured_minimum_is_a_usage_error(quiet: dict[str, Path]) -> None:
    run = models("calibrate", "leak", quiet["learn"], "--check-s", "3", "--out", "never.json")
    assert run.returncode == 2
    assert "--check-s: expected a number from 4, got '3'" in run.stderr
    assert not Path("never.json").exists()


def test_a_file_shorter_than_one_check_is_not_judged_and_the_others_are(
    quiet: dict[str, Path], tmp_path: Path
) -> None:
    # 3 s of one-second levels would be judged as a whole night's check: a warning out of noise.
    _calibrate(quiet["learn"], tmp_path / "b8.json")
    run = models("score", "leak", quiet["short"], quiet["judge"], "--baseline", tmp_path / "b8.json")
    assert run.returncode == 2
    assert [json.loads(line)["file"] for line in run.stdout.splitlines()] == [str(quiet["judge"])]
    assert f"{quiet['short']}: 3 s to judge, less than one whole check of 8 s (--check-s)" in run.stderr
    learn = models("calibrate", "leak", quiet["short"], "--out", tmp_path / "short.json")
    assert learn.returncode == 2
    assert f"{quiet['short']}: 3 s to judge" in learn.stderr
    assert not (tmp_path / "short.json").exists()


def test_a_remainder_shorter_than_a_check_joins_the_check_before_it(
    quiet: dict[str, Path], tmp_path: Path
) -> None:
    # 24 s in 10 s checks: 0-10 and 10-24 s, never a 4 s check judged on its own.
    _calibrate(quiet["learn"], tmp_path / "b10.json", "--check-s", "10")
    run = models("score", "leak", quiet["judge"], "--baseline", tmp_path / "b10.json")
    assert [c["start_s"] for c in json.loads(run.stdout)["evidence"]["checks"]] == [0, 10]


def test_one_quiet_night_given_twice_is_refused(quiet: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "b.json"
    run = models("calibrate", "leak", quiet["learn"], quiet["learn"], "--out", out)
    assert run.returncode == 2
    assert f"{quiet['learn']} is the same file as {quiet['learn']}" in run.stderr
    copy = shutil.copy(quiet["learn"], tmp_path / "night2.wav")
    run = models("calibrate", "leak", quiet["learn"], copy, "--out", out)
    assert run.returncode == 2
    assert f"{copy} is the same content as {quiet['learn']}" in run.stderr
    assert "give each quiet night once" in run.stderr
    assert not out.exists()


def test_a_clock_offset_for_one_stereo_recording_is_refused_not_ignored(quiet: dict[str, Path]) -> None:
    where = ["--distance", "100", "--material", "pvc", "--diameter", "152.4"]
    run = models("locate", quiet["pair"], *where, "--offset-s", "0.25")
    assert run.returncode == 2
    assert run.stdout == ""
    assert "--offset-s 0.25:" in run.stderr
    assert "--offset-s is for two WAVs" in run.stderr
    assert models("locate", quiet["pair"], *where).returncode == 0


@pytest.fixture(scope="module")
def pump(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One pump's normal sound at 16 kHz (12 clips), and today's at 16 and at 8 kHz."""
    d = tmp_path_factory.mktemp("pump")
    out = {}
    for name, seconds, rate, seed in (
        ("normal", 120, 16_000, 1),
        ("today", 20, 16_000, 2),
        ("today8k", 20, 8000, 2),
    ):
        scene = MachineScene.random(np.random.default_rng(4), snr_db=8.0, sample_rate=rate)
        out[name] = d / f"{name}.wav"
        write_wav(out[name], MachineSoundSynth(scene, seed=seed).render_seconds(seconds), rate)
    out["normal.npy"] = d / "normal.npy"
    assert models("features", "machine-sound", out["normal"], "--out", out["normal.npy"]).returncode == 0
    return out


def test_clips_at_another_rate_than_the_calibrations_are_warned_about(pump: dict[str, Path]) -> None:
    def score(today: str, normal: str) -> CliRun:
        run = models("score", "machine-sound", "--features", pump[today], "--calibrate", pump[normal])
        assert run.returncode == 0, run.stderr
        return run

    other = score("today8k", "normal")
    assert (
        f"warning: {pump['today8k']}: recorded at 8000 Hz, the calibration's WAVs at 16000 Hz" in other.stderr
    )
    assert "warning" not in score("today", "normal").stderr
    assert "warning" not in score("today8k", "normal.npy").stderr  # features alone: no rate known
