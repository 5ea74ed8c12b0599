"""The shipped `pump` prior of the machine-sound detector: the file a gateway loads is the one its
manifest describes (sha256), it is a usable shrinkage target, and a tampered copy is refused."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from water_edge.core.digests import sha256_file
from water_edge.models.machine_sound.features import N_FEATURES
from water_edge.models.machine_sound.prior import load_prior, manifest_path, prior_target
from water_edge.models.manifest import ModelError, read_manifest, verify_file


def test_the_prior_file_matches_its_manifest() -> None:
    path = manifest_path("pump")
    manifest = read_manifest(path)
    assert sha256_file(manifest.model_path(path)) == manifest.sha256
    assert manifest.input.shape == (-1, N_FEATURES)
    lopo = manifest.metrics["leave_one_pump_out"]["mean"]  # measured, not trained on the pump scored
    assert set(lopo) == {"snr6", "snr0", "snr_6"}


def test_the_prior_is_a_correlation_to_shrink_towards() -> None:
    target = load_prior("pump")
    assert target.shape == (N_FEATURES, N_FEATURES)
    np.testing.assert_allclose(np.diag(target), 1.0, atol=1e-6)
    assert np.linalg.eigvalsh(target).min() > 0
    assert prior_target("none") is None


def test_a_tampered_prior_is_refused(tmp_path: Path) -> None:
    src = manifest_path("pump")
    manifest = read_manifest(src)
    shutil.copy(src, tmp_path / src.name)
    npy = tmp_path / manifest.model_file
    target = np.load(manifest.model_path(src))
    target[0, 1] = target[1, 0] = 0.5
    np.save(npy, target)
    with pytest.raises(ModelError, match="does not match the manifest"):
        verify_file(manifest, tmp_path / src.name)
