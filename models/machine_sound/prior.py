"""The shipped machine-sound priors: shrinkage targets for a machine's feature covariance.

`pump` (`pump_prior.npy` and its manifest `pump_prior.json`, built by
`models/train/machine_sound_prior.py`): how the 136 clip features of pumps co-vary in normal
running, from the normal clips of four real pumps. A machine calibrated on its own clips shrinks its
covariance towards it instead of towards the identity (`[models.machine_sound.calibration] prior`);
`"none"` keeps the identity, for machines that are not pumps. The file is checked against the
sha256 in its manifest before use, like every shipped model.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final, Literal

import numpy as np
import numpy.typing as npt

from water_edge.models.machine_sound.features import N_FEATURES
from water_edge.models.manifest import ModelError, read_manifest, verify_file

PriorName = Literal["pump", "none"]
PRIOR_DIR: Final = Path(__file__).resolve().parent
PRIOR_VERSION: Final = "1.0.0"
F64 = npt.NDArray[np.float64]


def manifest_path(name: str) -> Path:
    return PRIOR_DIR / f"{name}_prior.json"


@cache
def load_prior(name: str) -> F64:
    """The (136, 136) target of prior `name`, verified; `ModelError` saying why when it cannot be."""
    path = manifest_path(name)
    if not path.exists():
        raise ModelError(f"machine-sound prior {name!r}: no manifest at {path}")
    manifest = read_manifest(path)
    npy = verify_file(manifest, path)
    try:
        target = np.load(npy, allow_pickle=False).astype(np.float64)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{npy}: not a numpy array ({exc})") from None
    if target.shape != (N_FEATURES, N_FEATURES) or not np.isfinite(target).all():
        raise ModelError(f"{npy}: expected a finite ({N_FEATURES}, {N_FEATURES}) matrix, got {target.shape}")
    if not np.allclose(target, target.T, atol=1e-6) or np.linalg.eigvalsh(target).min() <= 0:
        raise ModelError(f"{npy}: not a symmetric positive definite matrix")
    return np.asarray(target, dtype=np.float64)


def prior_target(name: PriorName | None) -> F64 | None:
    """The target for a config's `prior` value (`None` for `"none"`)."""
    return None if name in (None, "none") else load_prior(str(name))


def prior_label(name: PriorName | None) -> str | None:
    """What a calibration records of its prior: name and version (`"pump 1.0.0"`)."""
    if name in (None, "none"):
        return None
    return f"{name} {read_manifest(manifest_path(str(name))).version}"
