"""The simulated plant's own pipe acoustics: how fast and how far leak noise travels in its mains.

This is the plant's physics, kept apart from the product's localiser on purpose: a hardware-in-the-
loop test is only worth something if the plant is not built from the code under test. The figures
are textbook ones for water-filled elastic pipes:

- wave speed of the fluid-borne wave (Korteweg): c = sqrt(K/rho / (1 + K*D/(E*e))), with water's bulk
  modulus K = 2.2 GPa and density 1000 kg/m^3, inner diameter D, wall thickness e and the wall's
  Young's modulus E; walls follow the usual class of each material (ductile iron K9, PVC SDR 17,
  PE SDR 11, ...);
- attenuation rising linearly with frequency, faster in viscoelastic plastics and small pipes:
  alpha(f) = slope * (f / 100 Hz) * sqrt(150 mm / D) dB/m;
- leak noise carried in a band that moves down as the pipe gets larger: band(DN150) * (150/D)^0.3.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

WATER_BULK_MODULUS_PA = 2.2e9
WATER_DENSITY = 1000.0


@dataclass(frozen=True, slots=True)
class Main:
    """One pipe material as the plant lays it."""

    youngs_modulus_pa: float
    wall_fixed_mm: float  # metal pipes: a fixed part plus a share of the diameter
    wall_per_mm_diameter: float  # plastics: 1 / SDR
    db_per_m_per_100hz: float
    noise_band_dn150_hz: tuple[float, float]
    metal: bool

    def wall_mm(self, diameter_mm: float) -> float:
        return self.wall_fixed_mm + self.wall_per_mm_diameter * diameter_mm

    def speed(self, diameter_mm: float) -> float:
        compliance = (
            WATER_BULK_MODULUS_PA * diameter_mm / (self.youngs_modulus_pa * self.wall_mm(diameter_mm))
        )
        return math.sqrt(WATER_BULK_MODULUS_PA / WATER_DENSITY / (1.0 + compliance))


MATERIALS: dict[str, Main] = {
    "cast_iron": Main(100e9, 7.0, 0.02, 0.008, (80.0, 1200.0), metal=True),
    "ductile_iron": Main(170e9, 4.5, 0.009, 0.006, (100.0, 1500.0), metal=True),
    "pe": Main(0.9e9, 0.0, 1 / 11, 0.08, (10.0, 200.0), metal=False),
    "pvc": Main(3.3e9, 0.0, 1 / 17, 0.05, (10.0, 300.0), metal=False),
    "steel": Main(207e9, 3.0, 0.012, 0.004, (100.0, 2000.0), metal=True),
}


def material(name: str) -> Main:
    """The plant's material called `name` ('ductile_iron', 'Ductile iron', 'PVC', ...)."""
    try:
        return MATERIALS[name.strip().lower().replace("-", "_").replace(" ", "_")]
    except KeyError:
        raise ValueError(f"unknown pipe material {name!r}; expected one of: {', '.join(MATERIALS)}") from None


def wave_speed(name: str, diameter_mm: float) -> float:
    """Speed (m/s) at which leak noise travels along the main."""
    return material(name).speed(diameter_mm)


def attenuation_db_per_m(name: str, diameter_mm: float, freq_hz: float) -> float:
    return material(name).db_per_m_per_100hz * freq_hz / 100.0 * math.sqrt(150.0 / diameter_mm)


def leak_band(name: str, diameter_mm: float) -> tuple[float, float]:
    lo, hi = material(name).noise_band_dn150_hz
    shift = (150.0 / diameter_mm) ** 0.3
    return lo * shift, hi * shift
