"""The judgement and the confirmation a `[[models.leak]]` table configures: what the gateway's
processor judges each check with, and what `models score leak --sensor` replays stored nights with."""

from __future__ import annotations

from dataclasses import fields

from water_edge.models.leak.accumulate import Accumulation
from water_edge.models.leak.config import LeakModelSection
from water_edge.models.leak.judge import Confirmation, JudgeParams


def judge_params(section: LeakModelSection) -> JudgeParams:
    """Every `[models.leak.detection]` key that is a judgement parameter, by name, and the pipe's."""
    judged = {f.name for f in fields(JudgeParams)}
    return JudgeParams(
        **section.detection.model_dump(include=judged),
        material=section.material,
        diameter_mm=section.diameter_mm,
    )


def new_confirmation(section: LeakModelSection) -> Confirmation:
    """A sensor's confirmation as configured (`[models.leak.detection]`), from quiet."""
    d = section.detection
    return Confirmation(
        clear_nights=d.clear_nights,
        next_night=d.confirm_next_night,
        accumulation=Accumulation(k=d.accumulate_k, h=d.accumulate_h, nights=d.accumulate_nights),
    )
