"""`edge-agent models score|features|calibrate machine-sound`: the contracts an engineer scripts
against, and the `machine_sound_calibration` signed command's target."""

from __future__ import annotations

import contextlib
import io
import json
import time
import wave
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy.io import wavfile

from water_edge.agent.assembly import build_processors, calibration_targets
from water_edge.agent.cli import main
from water_edge.agent.config import load_config
from water_edge.core.processor import Calibratable, CalibrationFailedError
from water_edge.models.machine_sound.store import SoundCalibrationStore, open_history
from water_edge.sim.machine_sound import MachineScene, MachineSoundSynth, write_wav
from water_edge.sim.machine_sound import main as machine_sound_main

SCENE = MachineScene.random(np.random.default_rng(4), snr_db=8.0)


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Normal and faulty recordings of one simulated pump, turned into .npy files by the CLI itself."""
    d = tmp_path_factory.mktemp("sound")
    normal = d / "normal.wav"
    write_wav(normal, MachineSoundSynth(SCENE, seed=4).render_seconds(250.0), 16_000)
    faulty = MachineSoundSynth(SCENE, seed=5)
    faulty.inject("cavitation", severity=0.6, at_s=20.0)
    write_wav(d / "faulty.wav", faulty.render_seconds(45.0), 16_000)
    out = {}
    for name in ("normal", "faulty"):
        out[name] = d / f"{name}.npy"
        argv = ["models", "features", "machine-sound", str(d / f"{name}.wav"), "--out", str(out[name])]
        with contextlib.redirect_stdout(io.StringIO()):  # its one summary line, not a test's output
            assert main(argv) == 0
    return out


def test_features_from_wav_are_one_row_per_whole_10_s_clip(features: dict[str, Path]) -> None:
    assert np.load(features["normal"]).shape == (25, 136)
    assert np.load(features["faulty"]).shape == (4, 136)  # 45 s: the last 5 s are not a clip


@pytest.mark.parametrize("prior", [[], ["--prior", "pump"]], ids=["no-prior", "pump-prior"])
def test_score_prints_one_json_line_per_row_and_flags_the_fault(
    features: dict[str, Path], capsys: pytest.CaptureFixture[str], prior: list[str]
) -> None:
    # No prior by default; with the pump prior the same contract holds.
    code = main(
        ["models", "score", "machine-sound", "--features", str(features["faulty"]),
         "--calibrate", str(features["normal"]), *prior]
    )  # fmt: skip
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = [json.loads(line) for line in out.out.splitlines()]
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    assert all(set(r) >= {"row", "score", "anomaly"} for r in rows)
    assert rows[0]["anomaly"] == 0  # the first 20 s are healthy
    assert [r["anomaly"] for r in rows[2:]] == [1, 1]  # cavitating from 20 s on
    assert "above 2 kHz" in rows[3]["explanation"]  # cavitation noise is broadband and high
    assert rows[3]["groups"][0]["score"] >= 1


def test_score_takes_wav_recordings_directly_and_leaves_silence_out(
    features: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An engineer with two recordings need not featurise them first: the same scores as the .npy
    # route, each clip says where it is, and a stretch of an unplugged input is neither learnt nor
    # called a fault.
    wavs = features["normal"].parent
    silent = tmp_path / "unplugged.wav"
    write_wav(silent, np.zeros(20 * 16_000, dtype=np.float32), 16_000)

    def score(*argv: str) -> tuple[list[dict], str]:  # type: ignore[type-arg]
        assert main(["models", "score", "machine-sound", *argv]) == 0
        out = capsys.readouterr()
        return [json.loads(line) for line in out.out.splitlines()], out.err

    via_npy, _ = score("--features", str(features["faulty"]), "--calibrate", str(features["normal"]))
    direct, err = score(
        "--features", str(wavs / "faulty.wav"), str(silent),
        "--calibrate", str(wavs / "normal.wav"), str(silent),
    )  # fmt: skip
    # (the .npy route stores float32 features: the same scores to that precision)
    assert [r["score"] for r in direct[:4]] == pytest.approx([r["score"] for r in via_npy], rel=1e-3)
    assert [r["anomaly"] for r in direct[:4]] == [r["anomaly"] for r in via_npy]
    assert [(r["file"], r["start_s"]) for r in direct] == [
        *((str(wavs / "faulty.wav"), 10.0 * i) for i in range(4)),
        (str(silent), 0.0),
        (str(silent), 10.0),
    ]
    assert all(r["score"] is None and r["anomaly"] is None and "not heard" in r["error"] for r in direct[4:])
    assert "2 calibration clip(s) of digital silence left out" in err
    muted = tmp_path / "muted.npy"  # a feature export holding a silent clip is judged alike
    np.save(muted, np.vstack([np.load(features["faulty"])[:1], np.zeros((1, 136))]))
    exported, _ = score("--features", str(muted), "--calibrate", str(features["normal"]))
    assert exported[0]["score"] == via_npy[0]["score"]
    assert (exported[1]["row"], exported[1]["score"], exported[1]["anomaly"]) == (1, None, None)
    code = main(["models", "score", "machine-sound", "--features", str(silent), "--calibrate", str(silent)])
    assert code == 2
    assert "every calibration clip is digital silence" in capsys.readouterr().err


def _save_npz(path: Path) -> None:
    with path.open("wb") as fh:  # np.savez would add ".npz" to the name
        np.savez(fh, features=np.zeros((5, 136)))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p: np.save(p, np.zeros((5, 20))), "shape (clips, 136)"),
        (_save_npz, "a .npz archive (features), not a .npy array"),
        (lambda p: np.save(p, np.ones((5, 136), dtype=np.complex128)), "numeric array of shape (clips, 136)"),
        (lambda p: p.write_text("not numpy"), "not a numpy .npy array"),
        (lambda p: p.write_text("1.0,2.0\n3.0,4.0\n"), "save it with numpy.save"),  # a CSV named .npy
        (lambda p: p.mkdir(), "a directory"),
        (lambda p: np.save(p, np.zeros((0, 136))), "no rows"),
    ],
)
def test_bad_feature_files_are_one_line_on_stderr_and_exit_2(
    tmp_path: Path,
    features: dict[str, Path],
    capsys: pytest.CaptureFixture[str],
    make: Callable[[Path], object],
    message: str,
) -> None:
    bad = tmp_path / "bad.npy"
    make(bad)
    code = main(
        ["models", "score", "machine-sound", "--features", str(bad), "--calibrate", str(features["normal"])]
    )
    out = capsys.readouterr()
    assert code == 2
    assert out.out == ""
    assert len(out.err.strip().splitlines()) == 1
    assert message in out.err


def test_a_calibration_of_one_clip_repeated_is_refused_not_learnt(
    tmp_path: Path, features: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # A stuck export repeats one row: learnt, its zero spread made every later clip score ~1e17.
    stuck = tmp_path / "stuck.npy"
    np.save(stuck, np.tile(np.load(features["normal"])[0], (100, 1)))
    code = main(
        ["models", "score", "machine-sound", "--features", str(features["faulty"]), "--calibrate", str(stuck)]
    )
    out = capsys.readouterr()
    assert code == 2
    assert out.out == ""
    assert "need at least 10 different calibration clips, got 1 different of 100" in out.err


@pytest.mark.parametrize("placeholder", [np.finfo(np.float32).max, 1e200], ids=["float32-max", "1e200"])
def test_a_placeholder_in_one_calibration_clip_is_left_out_and_said_not_learnt(
    tmp_path: Path, features: dict[str, Path], capsys: pytest.CaptureFixture[str], placeholder: float
) -> None:
    # Learnt, float32's largest value in one cell widened that feature's spread so far that nothing
    # scored above zero (the fault was missed); 1e200 made the covariance's SVD fail (a traceback).
    normal = np.load(features["normal"]).astype(np.float64)  # an export in float64 holds 1e200
    normal[7, 130] = placeholder
    exported = tmp_path / "exported.npy"
    np.save(exported, normal)
    argv = ["models", "score", "machine-sound", "--features", str(features["faulty"])]
    assert main([*argv, "--calibrate", str(exported)]) == 0
    out = capsys.readouterr()
    assert "1 calibration clip(s) left out: non-finite features, or beyond ±1e+15" in out.err
    anomaly = [json.loads(line)["anomaly"] for line in out.out.splitlines()]
    assert anomaly[0] == 0
    assert anomaly[2:] == [1, 1]  # cavitating from 20 s on
    faulty = np.load(features["faulty"]).astype(np.float64)
    faulty[1, 3] = placeholder
    scored = tmp_path / "scored.npy"
    np.save(scored, faulty)
    assert main([*argv[:-1], str(scored), "--calibrate", str(features["normal"])]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[1])
    assert row["score"] is None
    assert row["error"] == "non-finite features, or beyond ±1e+15"


def _write_pcm24(path: Path, x: np.ndarray, rate: int) -> None:
    """scipy writes no 24-bit PCM; field recorders do."""
    pcm = np.round(np.clip(x, -1, 1 - 2**-23) * 2**23).astype("<i4").view(np.uint8).reshape(-1, 4)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(3)
        w.setframerate(rate)
        w.writeframes(pcm[:, :3].tobytes())


def test_features_are_the_same_from_a_recorders_24_bit_float_or_stereo_wav(tmp_path: Path) -> None:
    # A handheld recorder writes 24-bit PCM, an audio editor 32-bit float, a two-capsule
    # microphone stereo: the same sound must give the same features as 16-bit mono.
    x = MachineSoundSynth(SCENE, seed=6).render_seconds(10.0)
    x = 0.5 * x / np.max(np.abs(x))
    files: dict[str, Callable[[Path], object]] = {
        "pcm16": lambda p: wavfile.write(p, 16_000, np.round(x * 32767).astype(np.int16)),
        "pcm24": lambda p: _write_pcm24(p, x, 16_000),
        "float32": lambda p: wavfile.write(p, 16_000, x.astype(np.float32)),
        "stereo16": lambda p: wavfile.write(p, 16_000, np.round(np.c_[x, x] * 32767).astype(np.int16)),
    }
    got = {}
    for name, write in files.items():
        write(tmp_path / f"{name}.wav")
        with contextlib.redirect_stdout(io.StringIO()):
            assert main(["models", "features", "machine-sound", str(tmp_path / f"{name}.wav"),
                         "--out", str(tmp_path / f"{name}.npy")]) == 0  # fmt: skip
        got[name] = np.load(tmp_path / f"{name}.npy")
    for name in ("pcm24", "float32", "stereo16"):
        assert got[name].shape == (1, 136)
        # 16-bit quantisation noise is the only difference: far below any band's level. The
        # histogram entropy (column 135) is left out: 16-bit steps fall unevenly into its 256 bins.
        assert np.allclose(got[name][:, :128], got["pcm16"][:, :128], atol=1e-2), name
        assert np.allclose(got[name][:, 128:135], got["pcm16"][:, 128:135], rtol=1e-2, atol=1e-3), name


def test_features_are_written_to_the_file_named_and_nowhere_else(
    tmp_path: Path, features: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    wav = tmp_path / "clip.wav"
    write_wav(wav, MachineSoundSynth(SCENE, seed=6).render_seconds(10.0), 16_000)
    out = tmp_path / "features"  # no .npy suffix
    assert main(["models", "features", "machine-sound", str(wav), "--out", str(out)]) == 0
    assert capsys.readouterr().out == f"{out}: 1 clips x 136 features\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.wav", "features"]
    assert np.load(out).shape == (1, 136)
    assert (
        main(
            [
                "models",
                "score",
                "machine-sound",
                "--features",
                str(out),
                "--calibrate",
                str(features["normal"]),
            ]
        )
        == 0
    )
    (tmp_path / "folder").mkdir()
    assert main(["models", "features", "machine-sound", str(wav), "--out", str(tmp_path / "folder")]) == 2
    assert "folder: Is a directory" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.wav", "features", "folder"]


def test_recordings_at_two_sample_rates_are_not_written_into_one_features_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A .npy keeps no rate: clips of a 44.1 kHz recorder mixed into a 16 kHz calibration's file
    # could never be warned about when scored.
    x = MachineSoundSynth(SCENE, seed=6).render_seconds(10.0)
    write_wav(tmp_path / "site16k.wav", x, 16_000)
    write_wav(tmp_path / "phone44k.wav", np.tile(x, 3), 44_100)  # 10.9 s at this rate
    out = tmp_path / "mixed.npy"
    argv = [
        "models",
        "features",
        "machine-sound",
        str(tmp_path / "site16k.wav"),
        str(tmp_path / "phone44k.wav"),
    ]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "2 sample rates" in err
    assert f"16000 Hz: {tmp_path / 'site16k.wav'}" in err
    assert f"44100 Hz: {tmp_path / 'phone44k.wav'}" in err
    assert not out.exists()


def test_the_simulator_says_when_a_fault_drives_its_sound_past_full_scale(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The agent scores saturated clips but never keeps them, so a replay of an alarm raised on
    # them shows nothing: the file's maker must know it wrote such clips.
    argv = ["--seconds", "40", "--seed", "1", "--fault", "bearing", "--at", "10"]
    assert machine_sound_main(["--wav", str(tmp_path / "loud.wav"), *argv]) == 0
    assert "of the samples clipped at full scale" in capsys.readouterr().err
    assert machine_sound_main(["--wav", str(tmp_path / "calm.wav"), "--seconds", "40", "--seed", "1"]) == 0
    assert capsys.readouterr().err == ""


def test_an_unreadable_wav_is_one_line_on_stderr_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    assert main(["models", "features", "machine-sound", str(bad), "--out", str(tmp_path / "x.npy")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "not a readable WAV file" in err


def config_file(tmp_path: Path, prior: str | None = None) -> Path:
    path = tmp_path / "agent.toml"
    prior_line = f'prior = "{prior}"' if prior else ""
    path.write_text(f"""schema_version = 1
[gateway]
site = "s"
id = "g"
state_dir = "{tmp_path / "state"}"
[uplink]
host = "127.0.0.1"
[[models.machine_sound]]
name = "P1-sound"
device = "mic"
  [models.machine_sound.calibration]
  min_clips = 20
  {prior_line}
[[devices]]
name = "mic"
kind = "audio"
source = "file"
path = "{tmp_path / "none.wav"}"
""")
    return path


async def test_calibration_from_history_by_command_and_by_cli(
    tmp_path: Path, features: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    config = load_config(config_file(tmp_path))
    analytics = build_processors(config, {})  # no driver: the factory still calibrates
    target = calibration_targets([*analytics.factories, *analytics.processors])["machine_sound_calibration"]
    assert isinstance(target, Calibratable)
    assert target.calibration_target == "machine"
    with pytest.raises(CalibrationFailedError, match="no clip history"):
        await target.calibrate("P1-sound", {})
    with pytest.raises(CalibrationFailedError, match="no machine 'P2'"):
        await target.calibrate("P2", {})

    start = time.time_ns() - 300 * 10**9
    history = open_history(config.gateway.state_dir, "P1-sound", 14.0)
    normal = np.load(features["normal"]).astype(np.float64)
    history.append([(start + 10 * i * 10**9, row) for i, row in enumerate(normal)])
    history.close()

    done = await target.calibrate("P1-sound", {})
    assert done["version"] == 1
    assert done["clips"] == 25
    with pytest.raises(CalibrationFailedError, match="need at least 20"):
        await target.calibrate("P1-sound", {"from": (start + 200 * 10**9) / 1e9})

    capsys.readouterr()  # what the agent logged so far is not the command's output
    code = main(
        ["models", "calibrate", "machine-sound", "--machine", "P1-sound", "-c", str(config_file(tmp_path))]
    )
    out = capsys.readouterr()
    assert code == 0, out.err
    assert json.loads(out.out)["version"] == 2
    store = SoundCalibrationStore(config.gateway.state_dir, "P1-sound")
    assert store.versions() == [1, 2]
    cal = store.load()
    assert cal is not None
    assert cal.prior is None  # no prior by default
    assert cal.shrinkage == 0.01  # towards the identity


def test_a_pump_calibrated_with_the_pump_prior_records_it_and_finds_a_fault(
    tmp_path: Path, features: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    path = config_file(tmp_path, prior="pump")
    history = open_history(load_config(path).gateway.state_dir, "P1-sound", 14.0)
    start = time.time_ns() - 300 * 10**9
    normal = np.load(features["normal"]).astype(np.float64)
    history.append([(start + 10 * i * 10**9, row) for i, row in enumerate(normal)])
    history.close()
    code = main(["models", "calibrate", "machine-sound", "--machine", "P1-sound", "-c", str(path)])
    out = capsys.readouterr()
    assert code == 0, out.err
    cal = SoundCalibrationStore(load_config(path).gateway.state_dir, "P1-sound").load()
    assert cal is not None
    assert cal.prior == "pump 1.0.0"  # recorded with its version
    assert cal.shrinkage == pytest.approx(43 / (25 + 43))  # the prior counts as 43 clips
    faulty = np.load(features["faulty"]).astype(np.float64)
    assert (cal.score(faulty[2:]) > 1).all()  # the cavitating clips


def test_a_machines_stored_clips_scored_again_show_where_the_event_rule_raised_and_cleared(
    tmp_path: Path, features: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    # Before trusting an anomaly event (or recalibrating after maintenance) an engineer reads the
    # clips the gateway kept: when the scores rose, what moved, where the 3-of-4 rule fired.
    path = config_file(tmp_path)
    state_dir = load_config(path).gateway.state_dir
    normal = np.load(features["normal"]).astype(np.float64)
    cavitating = np.load(features["faulty"]).astype(np.float64)[2:]  # from 20 s on
    start = time.time_ns() - 3600 * 10**9
    clips = [*normal, *cavitating, *cavitating, *normal[:8]]
    history = open_history(state_dir, "P1-sound", 14.0)
    history.append([(start + 10 * i * 10**9, row) for i, row in enumerate(clips)])
    history.close()
    gateway = ["-c", str(path)]

    def models(*argv: str) -> tuple[int, list[dict[str, Any]], str]:
        capsys.readouterr()
        code = main(["models", *argv, *gateway])
        out = capsys.readouterr()
        return code, [json.loads(line) for line in out.out.splitlines()], out.err

    code, _, err = models("score", "machine-sound", "--machine", "P1-sound")
    assert code == 2
    assert "has no calibration yet" in err
    until = datetime.fromtimestamp((start + 245 * 10**9) / 1e9, UTC).isoformat()  # the 25 normal clips
    assert models("calibrate", "machine-sound", "--machine", "P1-sound", "--to", until)[0] == 0

    code, replayed, err = models("score", "machine-sound", "--machine", "P1-sound")
    assert code == 0, err
    assert len(replayed) == len(clips)
    anomalous = [r["anomaly"] for r in replayed]
    assert anomalous[25:29] == [1, 1, 1, 1], [r["score"] for r in replayed]
    assert sum(anomalous[:25]) <= 1
    assert sum(anomalous[29:]) <= 1
    events = [(i, r["event"]) for i, r in enumerate(replayed) if r["event"]]
    assert events == [(27, "raised"), (34, "cleared")]  # the third loud clip; six quiet ones later
    assert replayed[28]["alarm"]
    assert not replayed[35]["alarm"]
    assert "above 2 kHz" in replayed[27]["explanation"]
    assert "scored again against calibration v1: the event rule raised 1 time(s)" in err
    code, part, _ = models("score", "machine-sound", "--machine", "P1-sound", "--from", until)
    assert code == 0
    assert [r["ts"] for r in part] == [r["ts"] for r in replayed if r["ts"] >= part[0]["ts"]]
    code, _, err = models("score", "machine-sound", "--machine", "P2")
    assert (code, "no machine 'P2'" in err) == (2, True)
    # Epoch milliseconds (as SCADA exports write them) or past year 9999: said, not a traceback.
    for wrong in (str(start // 10**6), "1e30"):
        code, _, err = models("score", "machine-sound", "--machine", "P1-sound", "--from", wrong)
        assert code == 2, err
        assert f"{wrong!r} is not a time: epoch seconds run 0..253402300799" in err
    assert (
        "(epoch milliseconds? divide by 1000)"
        in models("calibrate", "machine-sound", "--machine", "P1-sound", "--to", str(start // 10**6))[2]
    )
