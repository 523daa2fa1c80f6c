"""The classifier-free guidance scale of each draw: a schedule over the draws and an interval.

A sampler makes n draws: one per code for the autoregressive priors (n = T = h*w, in raster order,
kept codes of a completion included), one per decoding step for MaskGIT (n = its steps). Draw i
covers the stretch [i/n, (i+1)/n) of the way through sampling.

- `cfg_schedule` ramps the scale from 1 (no guidance) up to cfg_scale, reached at the last draw:
  constant: cfg_scale at every draw (the default: the scale as it always was);
  linear:   1 + (cfg_scale - 1) * u;
  cosine:   1 + (cfg_scale - 1) * (1 - cos(pi u)) / 2, slow at both ends;
  where u = (i+1)/n is the way done at the end of draw i. Increasing guidance over the steps is
  MUSE's and MAR's linear schedule (Chang et al. 2023, sec. 2.6; Li et al. 2024, LTH14/mar
  `cfg_schedule`); the cosine ramp is its smooth twin.
- `cfg_interval: [start, end)` guides only the draws that begin inside it, i.e. start <= i/n < end;
  the others use scale 1 (conditional logits only). cfg_interval: [0, 0.5] guides the first half of the codes,
  as LlamaGen's `cfg_interval` (a token count, FoundationVision/LlamaGen autoregressive/models/
  generate.py) guides the first ones. Fractions, so one setting means the same for T codes or S steps.

Both shape the guidance and so what is drawn: a resumed sample folder refuses a change of either.
"""

from __future__ import annotations

import math

CFG_SCHEDULES = ("constant", "linear", "cosine")
FULL = (0.0, 1.0)  # the interval of a null cfg_interval: every draw


def ramp(schedule: str, u: float) -> float:
    """How far the scale has gone from 1 towards cfg_scale, 0..1, at the way done u in (0, 1]."""
    if schedule == "linear":
        return u
    if schedule == "cosine":
        return (1.0 - math.cos(math.pi * u)) / 2.0
    return 1.0


def guidance_scales(scale: float, schedule: str | None, interval: list[float] | None, n: int) -> list[float]:
    """The guidance scale of each of n draws (see the module doc); null schedule: constant."""
    start, end = interval or FULL
    scales = []
    for i in range(n):
        weight = ramp(schedule or "constant", (i + 1) / n) if start <= i / n < end else 0.0
        # The exact cfg_scale at full weight: constant with no interval is bit for bit the old sampler.
        scales.append(scale if weight == 1.0 else 1.0 + (scale - 1.0) * weight)
    return scales


def guidance_problem(schedule: str | None, interval: list[float] | None, scale: float) -> str | None:
    """Why these guidance settings cannot be honoured, in words ending in the fix; None when they can."""
    if schedule not in (None, *CFG_SCHEDULES):
        return f"sample.cfg_schedule='{schedule}' is unknown; use one of {', '.join(CFG_SCHEDULES)}"
    if interval is not None:
        ok = isinstance(interval, list | tuple) and len(interval) == 2 and all(
            isinstance(v, int | float) and 0 <= v <= 1 for v in interval)
        if not ok or interval[0] >= interval[1]:
            return (f"sample.cfg_interval={list(interval) if isinstance(interval, list | tuple) else interval}: "
                    "need [start, end) fractions of the way with 0 <= start < end <= 1; pass e.g. "
                    "--cfg-interval 0,0.5 (or drop it: every draw is guided)")
    shaped = [f"sample.{key}" for key, on in (("cfg_schedule", schedule not in (None, "constant")),
                                               ("cfg_interval", interval is not None)) if on]
    if shaped and scale == 1.0:
        return (f"{' and '.join(shaped)} shape classifier-free guidance, but cfg_scale is 1 (no guidance); "
                "set --cfg-scale (e.g. 1.5) or drop them")
    return None
