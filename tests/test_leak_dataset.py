"""`edge-sim dataset leak`: labelled clips and an index, split by seed, the same for the same seed."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import pytest
from scipy.io import wavfile

from water_edge.sim import dataset_leak


def _make(out: Path, seed: int, clips: int = 8) -> int:
    return dataset_leak.main(
        ["--out", str(out), "--seed", str(seed), "--clips", str(clips), "--seconds", "1"]
    )


def test_dataset_writes_labelled_clips_and_an_index(tmp_path: Path) -> None:
    assert _make(tmp_path, 3) == 0
    rows = list(csv.DictReader((tmp_path / "index.csv").open()))
    meta = json.loads((tmp_path / "index.json").read_text())
    assert len(rows) == len(meta["clips"]) == 8
    assert {r["split"] for r in rows} == {"train", "eval"}
    for r in rows:
        sr, pcm = wavfile.read(tmp_path / r["file"])
        assert sr == 16000
        assert pcm.shape == (16000, 2)
        assert pcm.dtype.name == "int16"
        assert (r["label"] == "1") == (r["leak_position_m"] != "")
        assert r["material"] in {"ductile_iron", "steel", "cast_iron", "pvc", "pe"}
        assert r["file"].endswith("_leak.wav") == (r["label"] == "1")


def test_same_seed_same_files_and_eval_scenes_never_in_train(tmp_path: Path) -> None:
    _make(tmp_path / "a", 5)
    _make(tmp_path / "b", 5)
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "a").rglob("*.wav")}
    assert digest == {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / "b").rglob("*.wav")
    }
    specs = dataset_leak.plan(5, 400)
    train = {s.scene.seed for s in specs if s.split == "train"}
    assert not train & {s.scene.seed for s in specs if s.split == "eval"}
    # a bigger dataset of the same seed extends each split; it never moves an eval clip into train
    bigger = dataset_leak.plan(5, 800)
    assert {s.scene.seed for s in specs if s.split == "eval"} <= {
        s.scene.seed for s in bigger if s.split == "eval"
    }


def test_dataset_spans_materials_snrs_and_backgrounds() -> None:
    rows = [s.row() for s in dataset_leak.plan(1, 400)]
    assert {r["material"] for r in rows} == {"ductile_iron", "steel", "cast_iron", "pvc", "pe"}
    snrs = [r["snr_db"] for r in rows if r["label"]]
    assert min(snrs) < -5
    assert max(snrs) > 15
    assert all(set(r["backgrounds"].split("+")) <= {"flow", "pump", "traffic", "transients"} for r in rows)


@pytest.mark.parametrize("argv", [["--clips", "0"], ["--eval-fraction", "1.5"]])
def test_bad_arguments_exit_2_with_a_message(
    tmp_path: Path, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert dataset_leak.main(["--out", str(tmp_path), *argv]) == 2
    assert "edge-sim dataset leak:" in capsys.readouterr().err
