"""`edge-agent models score leak` / `locate` on WAV files: JSON out, any WAV format, bad files named."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from scipy.io import wavfile

from tests.support.cli import CliRun, edge_agent
from water_edge.sim.hydrophone import BACKGROUNDS, HydrophoneSynth, PipeScene

pytestmark = pytest.mark.slow


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    """`edge-agent models ARGS` as its own process, as a shell runs it: its exit status, and all
    it wrote to stdout and stderr (a library's own lines included)."""
    return subprocess.run(
        [sys.executable, "-m", "water_edge.agent.cli", "models", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def models(*args: str) -> CliRun:
    """`edge-agent models ARGS` in the test's own process (`tests.support.cli.edge_agent`): the
    same `main`, exit status and stdout/stderr (the CLI writes its lines to `sys.stdout` and
    `sys.stderr` as it goes; a crash raises here), without a new interpreter importing NumPy, SciPy
    and LiteRT for each call (about 0.9 s of CPU each). `cli` keeps the process where it is the
    subject: its exit status, and a stdout of JSON lines and a stderr without a traceback as a shell
    sees them (scoring files, a bad file among them, a mono file to locate, a rate too low)."""
    return edge_agent("models", *args)


@pytest.fixture(scope="module")
def quiet_pvc_8k() -> npt.NDArray[np.float32]:
    """60 s of a quiet PVC main at 8 kHz (seed 5), first channel: the rate tests take its first 40 s,
    the per-night folder test its three 20 s stretches (a synth renders block by block: its first
    40 s, or three 20 s renders one after another, are these samples). Read only."""
    quiet = PipeScene("pvc", 152.4, 100.0, None, 1.0, 0.0, BACKGROUNDS, sample_rate=8000, seed=5)
    x: npt.NDArray[np.float32] = HydrophoneSynth(quiet).render_seconds(60)[:, 0]
    x.flags.writeable = False
    return x


@pytest.fixture(scope="module")
def wavs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("leakwav")
    leak = PipeScene(
        "steel", 150.0, 120.0, 45.0, 1.0, 8.0, BACKGROUNDS, sample_rate=16000, channels=2, seed=31
    )
    quiet = PipeScene(
        "steel", 150.0, 120.0, None, 1.0, 8.0, BACKGROUNDS, sample_rate=16000, channels=2, seed=31
    )
    x_leak = HydrophoneSynth(leak).render_seconds(6)
    x_quiet = HydrophoneSynth(quiet).render_seconds(6)
    out = {
        "leak16k2ch": d / "leak_16k_2ch.wav", "quiet16k": d / "quiet_16k.wav",
        "leak44k24bit": d / "leak_44k.wav", "bad": d / "bad.wav", "short": d / "short.wav",
    }  # fmt: skip
    wavfile.write(out["leak16k2ch"], 16000, (x_leak * 0.3 * 32767).astype(np.int16))
    wavfile.write(out["quiet16k"], 16000, x_quiet[:, 0] * 0.3)  # float32 mono
    # 44.1 kHz int32 ("24-bit in 32") mono: resampled up by the simulator-independent path
    from scipy import signal

    up = signal.resample_poly(x_leak[:, 0].astype(np.float64), 441, 160) * 0.3
    wavfile.write(out["leak44k24bit"], 44100, (up * 2**31).astype(np.int32))
    out["bad"].write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    wavfile.write(out["short"], 8000, np.zeros(100, dtype=np.int16))
    wavfile.write(d / "pair.wav", 16000, x_leak)
    wavfile.write(d / "A.wav", 16000, x_leak[:, 0])
    wavfile.write(d / "B.wav", 16000, x_leak[:, 1])
    out.update({"pair": d / "pair.wav", "A": d / "A.wav", "B": d / "B.wav"})
    return out


def test_score_leak_prints_one_json_line_per_file_and_says_what_it_did(wavs: dict[str, Path]) -> None:
    res = cli("score", "leak", str(wavs["leak16k2ch"]), str(wavs["quiet16k"]), str(wavs["leak44k24bit"]))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(line) for line in res.stdout.splitlines()]
    assert [line["file"] for line in lines] == [
        str(wavs[k]) for k in ("leak16k2ch", "quiet16k", "leak44k24bit")
    ]
    leak, quiet, leak44 = lines
    assert leak["leak_probability"] > leak["threshold"] > quiet["leak_probability"]
    assert leak44["leak_probability"] > leak44["threshold"]
    assert "channel 1 of 2 judged (--channel)" in leak["input"]
    assert "resampled from 16000 Hz to 8000 Hz" in leak["input"]
    assert "resampled from 44100 Hz to 8000 Hz" in leak44["input"]
    assert len(leak["band_levels_db"]) == 20
    assert "level_dbfs" in leak


def test_a_bad_file_is_one_line_on_stderr_exit_2_and_the_others_are_still_scored(
    wavs: dict[str, Path], tmp_path: Path
) -> None:
    cut = tmp_path / "cut.wav"  # a copy that stopped part way (a full card, a pulled stick)
    cut.write_bytes(wavs["leak16k2ch"].read_bytes()[:20000])
    res = cli(
        "score",
        "leak",
        str(wavs["bad"]),
        str(wavs["leak16k2ch"]),
        str(wavs["short"]),
        str(wavs["bad"].with_name("missing.wav")),
        str(cut),
    )
    assert res.returncode == 2
    assert [json.loads(line)["file"] for line in res.stdout.splitlines()] == [str(wavs["leak16k2ch"])]
    # (LiteRT's C++ runtime may add its own "INFO: Created ... delegate" line to stderr)
    # (and without --baseline, one note that the verdict is the classifier's alone)
    lines = res.stderr.splitlines()
    errors = [line for line in lines if line.startswith("edge-agent models:") and "note:" not in line]
    assert len(errors) == 4
    assert "Traceback" not in res.stderr
    assert "bad.wav" in errors[0]
    assert "too short" in errors[1]
    assert "no such file" in errors[2]
    assert "cut.wav: truncated WAV file" in errors[3]


def test_locate_a_two_channel_wav_and_two_mono_wavs(wavs: dict[str, Path]) -> None:
    one = models("locate", str(wavs["pair"]), "--distance", "120", "--material", "steel")
    two = models(
        "locate",
        str(wavs["A"]),
        str(wavs["B"]),
        "--distance",
        "120",
        "--wave-speed",
        str(PipeScene("steel", 150.0, 120.0, 45.0, 1.0, 8.0, ()).wave_speed),
    )
    for res in (one, two):
        assert res.returncode == 0, res.stderr
        body = json.loads(res.stdout)
        assert body["position_m"] == pytest.approx(45.0, abs=2.4)
        assert {"uncertainty_m", "delay_s", "confidence", "warnings"} <= set(body)
        assert body["delay_s"] < 0  # nearer A: A hears it first


def test_locate_refuses_a_mono_file_without_a_traceback(wavs: dict[str, Path]) -> None:
    res = cli("locate", str(wavs["quiet16k"]), "--distance", "100", "--material", "pvc")
    assert res.returncode == 2
    assert "1 channel" in res.stderr
    assert "Traceback" not in res.stderr


def _quiet_then_leak(
    rate: int, seconds: tuple[int, int], *, seeds: tuple[int, int], site_seed: int
) -> npt.NDArray[np.int16]:
    """A PVC main's quiet, then a leak 30 m from the sensor, as one 16-bit mono recording."""
    scenes = [
        PipeScene("pvc", 150.0, 100.0, leak_m, 1.0, 0.0, BACKGROUNDS, sample_rate=rate, channels=1,
                  seed=seed, site_seed=site_seed)
        for leak_m, seed in zip((None, 30.0), seeds, strict=True)
    ]  # fmt: skip
    parts = [HydrophoneSynth(s).render_seconds(n)[:, 0] for s, n in zip(scenes, seconds, strict=True)]
    x = np.concatenate(parts)
    pcm: npt.NDArray[np.int16] = (x / np.max(np.abs(x)) * 0.5 * 32767).astype(np.int16)
    return pcm


@pytest.mark.parametrize("rate", [8000, 16000, 44100])
def test_a_long_recording_read_a_segment_at_a_time_gives_what_reading_it_whole_gives(
    tmp_path: Path, rate: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A logger's night is read in segments so memory stays bounded; the segments (here 3 checks of
    # 8 s, shrunk from 5 minutes) must not change a check's statistics or the verdict.
    from water_edge.agent.cli import main
    from water_edge.models.leak import recording

    pcm = _quiet_then_leak(rate, (50, 53), seeds=(5, 6), site_seed=6)
    night = tmp_path / "night.wav"
    wavfile.write(night, rate, pcm)
    base = tmp_path / "base.json"
    wavfile.write(tmp_path / "q.wav", rate, pcm[: 40 * rate])
    assert main(["models", "calibrate", "leak", str(tmp_path / "q.wav"), "--out", str(base)]) == 0
    capsys.readouterr()

    def scored() -> dict:  # type: ignore[type-arg]
        assert main(["models", "score", "leak", str(night), "--baseline", str(base)]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    whole = scored()
    monkeypatch.setattr(recording, "LONG_S", 60)
    monkeypatch.setattr(recording, "SEGMENT_S", 24)
    pieces = scored()
    assert "read in 4 segments of about 24 s (a long recording)" in pieces["input"]  # 12 checks
    assert [c["rise_db"] for c in pieces["evidence"]["checks"]] == [
        c["rise_db"] for c in whole["evidence"]["checks"]
    ]
    assert [c["score"] for c in pieces["evidence"]["checks"]] == [
        c["score"] for c in whole["evidence"]["checks"]
    ]
    assert (pieces["leak"], pieces["warning"]) == (whole["leak"], whole["warning"])
    assert pieces["level_dbfs"] == pytest.approx(whole["level_dbfs"], abs=0.1)
    assert pieces["leak_probability"] == pytest.approx(whole["leak_probability"], abs=0.02)


def test_start_and_end_judge_a_part_of_a_file_as_if_it_had_been_cut_out(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # A logger records the whole evening; the engineer judges its quiet hours only. The part must
    # give what a file cut to it gives (read whole or a segment at a time), with the checks' times
    # counted in the original file.
    from water_edge.agent.cli import main
    from water_edge.models.leak import recording

    rate = 16000
    pcm = _quiet_then_leak(rate, (60, 60), seeds=(7, 8), site_seed=8)
    evening, cut, quiet_part = tmp_path / "evening.wav", tmp_path / "cut.wav", tmp_path / "quiet.wav"
    wavfile.write(evening, rate, pcm)
    wavfile.write(cut, rate, pcm[44 * rate : 108 * rate])
    wavfile.write(quiet_part, rate, pcm[: 40 * rate])

    def run(*args: str) -> dict:  # type: ignore[type-arg]
        assert main(["models", *args]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    from_part = run("calibrate", "leak", str(evening), "--end", "0:40", "--out", str(tmp_path / "a.json"))
    from_file = run("calibrate", "leak", str(quiet_part), "--out", str(tmp_path / "b.json"))
    assert from_part["checks"] == from_file["checks"] == 5
    learned = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("a", "b")]
    for key in ("level_db", "level_sigma_db", "shape_db", "spread_db", "tonal_db", "clf_logit"):
        assert learned[0][key] == learned[1][key], key

    base = str(tmp_path / "b.json")
    whole = run("score", "leak", str(cut), "--baseline", base)
    part = run("score", "leak", str(evening), "--start", "44", "--end", "1:48", "--baseline", base)
    monkeypatch.setattr(recording, "LONG_S", 30)
    monkeypatch.setattr(recording, "SEGMENT_S", 24)
    segmented = run("score", "leak", str(evening), "--start", "44", "--end", "108", "--baseline", base)
    assert "judged from 44 s to 108 s" in part["input"]
    assert "read in 3 segments of about 24 s (a long recording)" in segmented["input"]
    for judged in (part, segmented):
        checks = judged["evidence"]["checks"]
        assert [c["start_s"] for c in checks] == [44 + 8 * i for i in range(8)]
        assert [c["score"] for c in checks] == [c["score"] for c in whole["evidence"]["checks"]]
        assert (judged["leak"], judged["warning"]) == (whole["leak"], whole["warning"])
    assert whole["leak"]  # the leak starts at 60 s: the part holds it


def test_a_start_or_end_outside_the_file_is_a_clear_error(wavs: dict[str, Path]) -> None:
    path = str(wavs["quiet16k"])  # 6 s
    past = models("score", "leak", path, "--start", "10")
    assert past.returncode == 2
    assert "--start 10 s is outside the recording (the recording is 6.00 s long)" in past.stderr
    backwards = models("score", "leak", path, "--start", "4", "--end", "3")
    assert backwards.returncode == 2
    assert "--end 3 s is not after --start 4 s" in backwards.stderr
    for garbled in ("1:75", "inf", "nan", "1::2", "-3"):
        res = models("score", "leak", path, f"--start={garbled}")
        assert res.returncode == 2
        assert f"expected seconds or [H:]MM:SS, got '{garbled}'" in res.stderr
        assert "Traceback" not in res.stderr
    assert "Traceback" not in past.stderr + backwards.stderr


def test_a_recording_below_8_khz_is_not_given_to_the_classifier(
    tmp_path: Path, quiet_pvc_8k: npt.NDArray[np.float32]
) -> None:
    """The classifier's features are band levels relative to the spectrum up to 4 kHz: a logger
    recording at 4 kHz has no top, and its quiet pipe read as a leak (this quiet PVC pipe:
    probability 1.0 at 4 kHz, 0.09 at 8 kHz; `leak: true`). Now the classifier is not applied below
    8 kHz; against a baseline made at the same rate the field detector judges the levels."""
    from scipy import signal

    x8 = quiet_pvc_8k[: 8000 * 40] * 0.3
    x4 = signal.resample_poly(x8, 1, 2)
    at8, at4, first, second = (tmp_path / n for n in ("q8.wav", "q4.wav", "q4a.wav", "q4b.wav"))
    wavfile.write(at8, 8000, x8.astype(np.float32))
    wavfile.write(at4, 4000, x4.astype(np.float32))
    wavfile.write(first, 4000, x4[: 4000 * 20].astype(np.float32))
    wavfile.write(second, 4000, x4[4000 * 20 :].astype(np.float32))

    r8, r4 = models("score", "leak", str(at8)), models("score", "leak", str(at4))
    assert r8.returncode == r4.returncode == 0, r8.stderr + r4.stderr
    line8, line4 = json.loads(r8.stdout), json.loads(r4.stdout)
    assert line8["leak"] is False
    assert 0 <= line8["leak_probability"] < 0.36
    assert line4["leak"] is None
    assert line4["leak_probability"] is None
    assert line4["window_probabilities"] == []
    assert any(
        "the classifier (trained on 8000 Hz audio, bands to 4 kHz) is not applied" in n
        for n in line4["input"]
    )
    assert f"{at4}: not judged: recorded below the classifier's 8000 Hz" in r4.stderr

    base = tmp_path / "b4.json"
    made = models("calibrate", "leak", str(first), "--out", str(base))
    assert made.returncode == 0, made.stderr
    judged = models("score", "leak", str(second), "--baseline", str(base))
    assert judged.returncode == 0, judged.stderr
    line = json.loads(judged.stdout)
    assert line["decision"] == "against baseline"
    assert line["leak"] is False
    assert line["classifier_leak"] is None
    assert all(c["classifier_logit_rise"] is None for c in line["evidence"]["checks"])
    assert "not judged" not in judged.stderr


def test_a_sample_rate_too_low_to_hear_a_pipe_is_refused(tmp_path: Path) -> None:
    wav = tmp_path / "slow.wav"
    wavfile.write(wav, 100, np.zeros(2000, dtype=np.int16) + 1000)
    run = cli("score", "leak", str(wav))
    assert run.returncode == 2
    assert "Traceback" not in run.stderr
    assert f"{wav}: sample rate 100 Hz is too low to hear a pipe: need at least 1000 Hz" in run.stderr


def test_clipped_seconds_of_a_recording_are_judged_but_never_learnt_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A logger's gain set too high: the gateway's audio driver flags saturated audio and a baseline
    never learns from it; the offline commands learnt from a clipped recording as from any other
    (its levels understated, its spectrum full of the clipping's harmonics)."""
    from water_edge.agent.cli import main
    from water_edge.models.leak import recording

    pcm = _quiet_then_leak(8000, (48, 1), seeds=(5, 6), site_seed=6)[: 48 * 8000].astype(np.float64)
    clipped = pcm.copy()
    clipped[: 16 * 8000] = np.clip(clipped[: 16 * 8000] * 20, -32768, 32767)  # the first two checks
    first, whole = tmp_path / "clipped_start.wav", tmp_path / "clipped_all.wav"
    wavfile.write(first, 8000, clipped.astype(np.int16))
    wavfile.write(whole, 8000, np.clip(pcm * 20, -32768, 32767).astype(np.int16))
    base = tmp_path / "base.json"

    assert main(["models", "calibrate", "leak", str(first), "--out", str(base)]) == 0
    made = capsys.readouterr()
    assert json.loads(made.out)["checks"] == 4  # of 6: the clipped two left out
    assert (
        f"warning: {first}: 2 check(s) saturated at full scale left out (clipped: lower the gain)" in made.err
    )
    assert main(["models", "calibrate", "leak", str(whole), "--out", str(tmp_path / "b2.json")]) == 2
    assert "every one of its 6 check(s) held audio saturated at full scale: lower the input gain" in (
        capsys.readouterr().err
    )

    def scored() -> dict:  # type: ignore[type-arg]
        assert main(["models", "score", "leak", str(first), "--baseline", str(base)]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    lines = [scored()]
    monkeypatch.setattr(recording, "LONG_S", 30)  # read a segment (three checks) at a time
    monkeypatch.setattr(recording, "SEGMENT_S", 24)
    lines.append(scored())
    assert "read in 2 segments of about 24 s (a long recording)" in lines[1]["input"]
    for line in lines:
        assert "16 s saturated at full scale (clipped): judged, never learnt from" in line["input"]
        assert [c.get("saturated_s", 0) for c in line["evidence"]["checks"]] == [8, 8, 0, 0, 0, 0]


def test_dropouts_in_a_recording_are_left_out_not_learnt_as_the_pipes_quiet(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A logger whose card stalled writes runs of one value (here 2 s of every 8 s check). The quiet
    in the levels is their tenth percentile: the baseline learnt the dropouts' -150 dB as the pipe's
    quiet, and the next clean night rose by 110-170 dB in every band: a leak. Scored against a clean
    baseline, the same file was "not heard" in every check. The gateway's audio driver marks such
    stretches and its detector leaves them out; now the offline commands do too."""
    from water_edge.agent.cli import main

    def night(seed: int) -> npt.NDArray[np.float64]:
        scene = PipeScene("pvc", 152.4, 100.0, None, 1.0, 0.0, BACKGROUNDS, sample_rate=8000, seed=seed,
                          site_seed=7)  # fmt: skip
        x = HydrophoneSynth(scene).render_seconds(48)[:, 0]
        return np.asarray(x / np.abs(x).max() * 0.3 * 32767)

    stalled, clean = night(5), night(6)
    for k in range(6):
        stalled[(k * 8 + 3) * 8000 : (k * 8 + 5) * 8000] = 0.0
    paths = {name: tmp_path / f"{name}.wav" for name in ("stalled", "clean")}
    for name, x in (("stalled", stalled), ("clean", clean)):
        wavfile.write(paths[name], 8000, x.astype(np.int16))

    def learnt(name: str) -> Path:
        out = tmp_path / f"{name}.json"
        assert main(["models", "calibrate", "leak", str(paths[name]), "--out", str(out)]) == 0
        return out

    def judged(name: str, baseline: Path) -> dict:  # type: ignore[type-arg]
        assert main(["models", "score", "leak", str(paths[name]), "--baseline", str(baseline)]) == 0
        return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]

    from_stalled = learnt("stalled")
    made = capsys.readouterr()
    assert json.loads(made.out)["seconds"] == 48 - 12
    assert (
        f"warning: {paths['stalled']}: 12 s with dropouts (one value for 50 ms or more): left out" in made.err
    )
    line = judged("clean", from_stalled)
    assert line["leak"] is False
    assert max(line["rise_db"].values()) < 10

    from_clean = learnt("clean")
    capsys.readouterr()
    line = judged("stalled", from_clean)
    assert line["signal_lost_checks"] == 0
    assert line["leak"] is False
    assert "12 s with dropouts (one value for 50 ms or more): left out, not the pipe" in line["input"]


def test_channel_picks_which_hydrophone_of_a_two_channel_logger_is_judged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A two-channel logger (sensors A and B, as `locate` takes them) was judged on its first channel
    only: sensor B could not be scored without splitting the file, and a file with A unplugged was
    "not heard" with no word that another channel holds the pipe."""
    from water_edge.agent.cli import main
    from water_edge.models.leak import recording

    scene = PipeScene("pvc", 152.4, 100.0, None, 1.0, 0.0, BACKGROUNDS, sample_rate=8000, seed=6, site_seed=7)
    x = HydrophoneSynth(scene).render_seconds(48)[:, 0]
    b_only = tmp_path / "b_only.wav"
    wavfile.write(
        b_only,
        8000,
        (np.stack([np.zeros_like(x), x / np.abs(x).max() * 0.3], axis=1) * 32767).astype(np.int16),
    )
    base = tmp_path / "b.json"
    assert main(["models", "calibrate", "leak", str(b_only), "--channel", "2", "--out", str(base)]) == 0
    assert json.loads(capsys.readouterr().out)["seconds"] == 48

    def scored(*more: str) -> tuple[dict, str]:  # type: ignore[type-arg]
        assert main(["models", "score", "leak", str(b_only), "--baseline", str(base), *more]) == 0
        out = capsys.readouterr()
        return json.loads(out.out), out.err

    first, err = scored()
    assert first["signal_lost_checks"] == 6
    assert "not judged" in err
    assert "; channel 1 of 2 judged: --channel N judges another" in err
    second, err = scored("--channel", "2")
    assert (second["signal_lost_checks"], second["leak"], second["warning"]) == (0, False, False)
    assert "channel 2 of 2 judged (--channel)" in second["input"]
    assert "not judged" not in err
    monkeypatch.setattr(recording, "LONG_S", 30)  # read a segment at a time: the same channel
    monkeypatch.setattr(recording, "SEGMENT_S", 24)
    segmented, _ = scored("--channel", "2")
    assert [c["rise_db"] for c in segmented["evidence"]["checks"]] == [
        c["rise_db"] for c in second["evidence"]["checks"]
    ]
    assert main(["models", "score", "leak", str(b_only), "--channel", "3"]) == 2
    assert f"{b_only}: has 2 channel(s): --channel 3 is not one of them" in capsys.readouterr().err


def test_a_baseline_says_the_rate_it_was_made_at_and_a_file_at_another_is_warned_about(
    tmp_path: Path, quiet_pvc_8k: npt.NDArray[np.float32]
) -> None:
    """A baseline learnt from a logger's 8 kHz nights, used to judge a night the gateway recorded
    at 4 kHz: the bands above 2 kHz are missing (here -19 and -65 dB in the top two) and read as a
    change of shape. Before, nothing said the rates differed: the baseline did not record its own."""
    from scipy import signal

    x8 = quiet_pvc_8k[: 8000 * 40] * 0.3
    first, second, low, high = (tmp_path / n for n in ("a8.wav", "b8.wav", "b4.wav", "b16.wav"))
    wavfile.write(first, 8000, x8[: 8000 * 20].astype(np.float32))
    wavfile.write(second, 8000, x8[8000 * 20 :].astype(np.float32))
    wavfile.write(low, 4000, signal.resample_poly(x8, 1, 2)[4000 * 20 :].astype(np.float32))
    wavfile.write(high, 16000, signal.resample_poly(x8, 2, 1)[16000 * 20 :].astype(np.float32))
    base = tmp_path / "b.json"
    made = models("calibrate", "leak", str(first), "--out", str(base))
    assert made.returncode == 0, made.stderr
    assert json.loads(base.read_text())["sample_rate_hz"] == 8000

    same = models("score", "leak", str(second), "--baseline", str(base))
    assert same.returncode == 0, same.stderr
    assert "sample rate" not in same.stderr
    assert "recorded at" not in same.stderr
    assert json.loads(same.stdout)["evidence"]["baseline_sample_rate_hz"] == 8000
    lower = models("score", "leak", str(low), "--baseline", str(base))
    assert lower.returncode == 0, lower.stderr
    assert (
        f"warning: {low}: recorded at 4000 Hz, the baseline's audio at 8000 Hz: its bands above 2000 Hz "
        "are missing, and read as a change; calibrate on quiet recordings made at 4000 Hz"
    ) in lower.stderr
    assert min(json.loads(lower.stdout)["rise_db"].values()) < -40  # what the warning is about
    higher = models("score", "leak", str(high), "--baseline", str(base))
    assert "recorded at 16000 Hz, the baseline's audio at 8000 Hz: the bands near 4000 Hz" in higher.stderr

    mixed = tmp_path / "mixed.json"
    made = models("calibrate", "leak", str(first), str(high), "--out", str(mixed))
    assert made.returncode == 0, made.stderr
    assert "different sample rates (a8.wav 8000 Hz, b16.wav 16000 Hz)" in made.stderr
    assert json.loads(mixed.read_text())["sample_rate_hz"] is None
    assert json.loads(mixed.read_text())["sample_rates_hz"] == [8000, 16000]  # which, kept with it
    assert "sample_rates_hz" not in json.loads(base.read_text())

    old = json.loads(base.read_text())
    del old["sample_rate_hz"]  # a baseline written before the rate was kept: judged, not warned
    base.write_text(json.dumps(old))
    judged = models("score", "leak", str(low), "--baseline", str(base))
    assert judged.returncode == 0, judged.stderr
    assert "recorded at" not in judged.stderr
    base.write_text(json.dumps({**old, "sample_rate_hz": "8k"}))
    refused = models("score", "leak", str(second), "--baseline", str(base))
    assert refused.returncode == 2
    assert "'sample_rate_hz' must be a rate in Hz or null, got '8k'" in refused.stderr


def test_a_loggers_folder_per_night_of_same_named_files_is_learnt_as_that_many_nights(
    tmp_path: Path, quiet_pvc_8k: npt.NDArray[np.float32]
) -> None:
    """Loggers write each night to its own folder under the same name (REC0001.WAV). The baseline
    named a recording's night by its file name alone, so three nights were learnt as one
    ('rec.wav', quality 'poor'), their night-to-night spread lost."""
    paths = []
    for k, night in enumerate(("2025-03-01", "2025-03-02", "2025-03-03")):
        (tmp_path / night).mkdir()
        paths.append(tmp_path / night / "REC0001.WAV")
        x = quiet_pvc_8k[8000 * 20 * k : 8000 * 20 * (k + 1)]  # the synth's next 20 s
        wavfile.write(paths[-1], 8000, (x * 0.3).astype(np.float32))
    base = tmp_path / "b.json"
    made = models("calibrate", "leak", *map(str, paths), "--out", str(base))
    assert made.returncode == 0, made.stderr
    baseline = json.loads(base.read_text())
    assert baseline["nights"] == [str(p) for p in paths]
    assert len(baseline["night_quiet_db"]) == 3
    assert json.loads(made.stdout)["quality"] == "fair"  # 3 nights (7 make it "good")
