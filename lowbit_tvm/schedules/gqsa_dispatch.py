"""Which GQSA rule and default config serve a workload, and how many slots per row its weights are padded to."""
import math
from dataclasses import dataclass

from ..ops.gqsa import GQSAOp
from .gqsa_gemv import GQSAGemv, GQSAGemvConfig
from .rule import ScheduleRule

# GEMV configs, best first: 32 lanes x 16 bytes per step (a 512-byte coalesced run of a row), then narrower
# warps for short rows (fewer padding slots). A config is used when it tiles N and its slot padding adds at
# most MAX_PADDING of the largest row's kept groups.
GEMV_CONFIGS = (
    GQSAGemvConfig(32, 4, 32, 64, 1),
    GQSAGemvConfig(32, 2, 32, 64, 1),
    GQSAGemvConfig(16, 4, 32, 64, 1),
    GQSAGemvConfig(8, 8, 32, 64, 1),
    GQSAGemvConfig(32, 1, 32, 64, 1),
    GQSAGemvConfig(16, 1, 32, 64, 1),
    GQSAGemvConfig(8, 1, 32, 64, 1),
    GQSAGemvConfig(8, 1, 8, 64, 1),
)
MAX_PADDING = 1 / 8
# The schedule config, once the slots are padded for the first fitting GEMV_CONFIGS entry: the first of these
# that tiles the padded op. From the H100 sweep (benchmarks/results/nvidia_h100_80gb_hbm3/gqsa.json, sweep_us):
# two words per lane and step (vec 16) instead of four were 4-24 % faster at M=1 wherever N >= 8192 (8192x57344,
# 50 %: 73.9 -> 58.7 us) and 1.7-1.9x faster at M=16 (487 -> 265 us on 28672x8192); at N = 4096 (11008x4096) the
# padding config (vec 32, one row per lane) stayed best. M > 16 keeps the padding config (not swept).
WIDE_N = 8192
PREFERRED = {
    "m1_wide": (GQSAGemvConfig(32, 4, 16, 64, 2), GQSAGemvConfig(16, 8, 16, 64, 1)),
    "small_batch": (GQSAGemvConfig(32, 4, 16, 64, 1), GQSAGemvConfig(16, 8, 16, 64, 1)),
}


def _regime(n: int, m: int):
    if m == 1:
        return "m1_wide" if n >= WIDE_N else None
    return "small_batch" if m <= 16 else None


@dataclass(frozen=True)
class GQSAPlan:
    """A rule, the op it schedules (with its padded slot count) and its config."""

    rule: ScheduleRule
    op: GQSAOp
    config: object


def slots_for(config: GQSAGemvConfig, group: int, kept: int) -> int:
    """The fewest slots per row >= ``kept`` (and >= 1) whose words ``config`` tiles exactly."""
    per_group = group // 8
    unit = config.words_per_step // math.gcd(config.words_per_step, per_group)
    return max(unit, -(-kept // unit) * unit)


def plan(n: int, k: int, group: int, kept: int, m: int) -> GQSAPlan:
    """The GEMV plan for ``m`` batch rows and weights whose fullest row keeps ``kept`` groups.

    Slots per row are padded for the first ``GEMV_CONFIGS`` entry that tiles N and pads at most ``MAX_PADDING``
    (else the one with the fewest padded words among those tiling N; the last entry tiles any N). The schedule
    config is then the first ``PREFERRED`` entry of the workload's regime that tiles that op, else that entry.
    """
    fitting = [c for c in GEMV_CONFIGS if n % (c.ty * c.rows) == 0]
    padded = [c for c in fitting if slots_for(c, group, kept) <= max(kept, 1) * (1 + MAX_PADDING)]
    config = padded[0] if padded else min(fitting, key=lambda c: slots_for(c, group, kept))
    op = GQSAOp(n, k, group, slots_for(config, group, kept), m)
    preferred = [c for c in PREFERRED.get(_regime(n, m), ()) if c.fits(n, op.words)]
    return GQSAPlan(GQSAGemv(), op, preferred[0] if preferred else config)
