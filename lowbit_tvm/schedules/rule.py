"""The schedule-rule interface shared by every kernel pattern (dlight style)."""
from abc import ABC, abstractmethod
from dataclasses import asdict, fields

from ..tvm_api import Schedule, Target, tirx


class ScheduleRule(ABC):
    """One kernel pattern: ``apply`` returns a schedule, or None when the function is not its pattern.

    Each rule has a frozen ``Config`` dataclass (its knobs and their defaults) and a ``SPACE`` mapping
    each knob to the values MetaSchedule may choose. With ``tunable=True`` every knob becomes a
    ``sample_categorical`` decision in the schedule's trace, so the trace is the search space.
    """

    name = "rule"
    Config = None
    SPACE: dict = {}
    # Knobs that keep their config value while tuning (e.g. ones that size padding or sit inside list
    # annotations, which must be plain integers in a MetaSchedule trace).
    FIXED_WHEN_TUNING: tuple = ()

    def apply(self, func: tirx.PrimFunc, target: Target, tunable: bool = False, config=None):
        """Schedule ``func`` for ``target``.

        Parameters
        ----------
        func : tvm.tirx.PrimFunc
            An unscheduled low-bit operator.
        target : tvm.target.Target
            The GPU target.
        tunable : bool
            When True, knobs are sampled (a MetaSchedule search space); else ``config`` is used.
        config : Config or None
            The knob values; None means the rule's defaults.

        Returns
        -------
        tvm.s_tir.Schedule or None
            None when the function is not this rule's pattern.
        """
        sch = Schedule(func)
        return sch if self.schedule(sch, target, tunable, config) else None

    @abstractmethod
    def schedule(self, sch: Schedule, target: Target, tunable: bool = False, config=None) -> bool:
        """Schedule ``sch`` in place (as ``apply``); False when it is not this rule's pattern."""

    def knobs(self, sch: Schedule, tunable: bool, config) -> dict:
        """The knob values for one application: ints, or sampled variables when tunable.

        Knobs named in ``FIXED_WHEN_TUNING`` keep their ``config`` value even when tuning.
        """
        config = config or self.Config()
        values = asdict(config)
        if not tunable:
            return values
        for field in fields(config):
            if field.name in self.FIXED_WHEN_TUNING:
                continue
            candidates = list(self.SPACE[field.name])
            probs = [1.0 / len(candidates)] * len(candidates)
            values[field.name] = sch.sample_categorical(candidates, probs)
        return values


def find_block(sch: Schedule, name: str):
    """The block called ``name`` in ``sch``, or None."""
    try:
        return sch.get_sblock(name)
    except Exception:  # pylint: disable=broad-except
        return None


def loops_inside(sch: Schedule, block, loop) -> list:
    """The loops of ``block`` nested inside ``loop`` (e.g. a cache block's own loops after ``compute_at``)."""
    loops = sch.get_loops(block)
    outer = [sch.get(rv) for rv in loops].index(sch.get(loop))
    return loops[outer + 1:]


def spread_store(sch: Schedule, staged, inline_consumers: bool = True) -> None:
    """Spread the copy of ``staged`` (a shared-memory tile of results) to global memory over a warp's lanes, four
    elements (a vector) each; first inline every consumer of it into that copy (epilogues) unless told not to."""
    consumers = sch.get_consumers(staged) if inline_consumers else []
    while consumers:
        sch.reverse_compute_inline(consumers[0])
        consumers = sch.get_consumers(staged)
    fused = sch.fuse(*sch.get_loops(staged)[-2:])
    _, tx, vec = sch.split(fused, [None, 32, 4])
    sch.bind(tx, "threadIdx.x")
    sch.vectorize(vec)


def read_index(sch: Schedule, block, name: str) -> int:
    """The index of buffer ``name`` among ``block``'s reads (what ``cache_read`` takes)."""
    names = [region.source.name for region in sch.get(block).reads]
    if name not in names:
        raise ValueError(f"block {sch.get(block).name_hint} reads no buffer {name}")
    return names.index(name)


def spread_copy(sch: Schedule, block, at, vec: int, warps_m, warps_n) -> None:
    """Spread a copy block's own loops (those inside loop ``at``) over a tensor-core block's threads
    (``threadIdx.x`` 32 lanes, ``threadIdx.y`` the ``warps_m x warps_n`` warps), ``vec`` elements wide."""
    fused = sch.fuse(*loops_inside(sch, block, at))
    _, wm, wn, tx, v = sch.split(fused, [None, warps_m, warps_n, 32, vec])
    sch.bind(tx, "threadIdx.x")
    sch.bind(sch.fuse(wm, wn), "threadIdx.y")
    sch.vectorize(v)
