"""Acoustics of water-filled pipes: wave speed, attenuation and leak-noise band by material and diameter.

One table serves both the simulator (which makes leak noise travel at this speed) and the localiser
(which turns a delay into a position), so the two cannot drift apart.

Wave speed is the Korteweg formula for the fluid-dominated (n = 1) wave in a thin-walled elastic
pipe:  c = sqrt( (K/rho) / (1 + K*D/(E*e)) ),  K = 2.2 GPa and rho = 1000 kg/m^3 for water,
D the inner diameter, e the wall thickness, E the wall's Young's modulus. Wall thickness follows a
typical standard for each material (ductile iron class K9, PVC SDR 17, PE SDR 11, ...).
Attenuation grows with frequency (wall losses, strongly so in viscoelastic plastics); it is modelled
as  alpha(f) = beta * (f / 100 Hz) * sqrt(150 mm / D)  dB/m.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

K_WATER_PA = 2.2e9
RHO_WATER = 1000.0


@dataclass(frozen=True, slots=True)
class PipeMaterial:
    """Mechanical and acoustic figures of one pipe material (see the module docstring)."""

    name: str
    label: str
    youngs_modulus_pa: float
    # Wall thickness e = wall_a_mm + wall_b * D_mm (plastics: e = D / SDR, so wall_a_mm = 0).
    wall_a_mm: float
    wall_b: float
    # Attenuation slope in dB/m per 100 Hz at DN150.
    beta_db_per_m: float
    # Band where a leak's noise is carried (Hz, at DN150), and the band the localiser correlates in.
    leak_band_hz: tuple[float, float]
    # Relative uncertainty of the predicted wave speed (modulus, wall and soil vary in the field).
    speed_rel_uncertainty: float
    metal: bool


MATERIALS: dict[str, PipeMaterial] = {
    m.name: m
    for m in (
        PipeMaterial("ductile_iron", "ductile iron", 170e9, 4.5, 0.009, 0.006, (100.0, 1500.0), 0.05, True),
        PipeMaterial("steel", "steel", 207e9, 3.0, 0.012, 0.004, (100.0, 2000.0), 0.05, True),
        PipeMaterial("cast_iron", "cast iron", 100e9, 7.0, 0.02, 0.008, (80.0, 1200.0), 0.06, True),
        PipeMaterial("pvc", "PVC", 3.3e9, 0.0, 1 / 17, 0.05, (10.0, 300.0), 0.10, False),
        PipeMaterial("pe", "PE", 0.9e9, 0.0, 1 / 11, 0.08, (10.0, 200.0), 0.12, False),
    )
}

_ALIASES = {
    "di": "ductile_iron",
    "ci": "cast_iron",
    "hdpe": "pe",
    "mdpe": "pe",
    "polyethylene": "pe",
    "upvc": "pvc",
    "pvc_u": "pvc",
    "iron": "ductile_iron",
}


def material(name: str) -> PipeMaterial:
    """The material for a user-given name ('ductile iron', 'Ductile-Iron', 'PVC', 'hdpe', ...)."""
    key = name.strip().lower().replace("-", "_").replace(" ", "_")
    key = _ALIASES.get(key, key)
    try:
        return MATERIALS[key]
    except KeyError:
        known = ", ".join(sorted(MATERIALS))
        raise ValueError(f"unknown pipe material {name!r}; expected one of: {known}") from None


def wall_thickness_mm(mat: PipeMaterial, diameter_mm: float) -> float:
    return mat.wall_a_mm + mat.wall_b * diameter_mm


def wave_speed(material_name: str, diameter_mm: float) -> float:
    """Korteweg wave speed (m/s) of the water-borne wave in a pipe of this material and inner diameter."""
    if not 10.0 <= diameter_mm <= 3000.0:
        raise ValueError(f"pipe diameter {diameter_mm} mm is outside 10..3000 mm")
    mat = material(material_name)
    e = wall_thickness_mm(mat, diameter_mm)
    stiffness = 1.0 + K_WATER_PA * diameter_mm / (mat.youngs_modulus_pa * e)
    return math.sqrt(K_WATER_PA / RHO_WATER / stiffness)


def attenuation_db_per_m(material_name: str, diameter_mm: float, freq_hz: float) -> float:
    """Attenuation of the leak wave at `freq_hz` (dB per metre of pipe)."""
    mat = material(material_name)
    return mat.beta_db_per_m * (freq_hz / 100.0) * math.sqrt(150.0 / diameter_mm)


def leak_band(material_name: str, diameter_mm: float) -> tuple[float, float]:
    """Band (Hz) that carries leak noise: larger pipes carry lower frequencies."""
    mat = material(material_name)
    scale = (150.0 / diameter_mm) ** 0.3
    lo, hi = mat.leak_band_hz
    return lo * scale, hi * scale
