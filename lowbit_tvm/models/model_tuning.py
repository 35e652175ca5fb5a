"""Tune every TensorIR task of a model graph, and apply the tuning records when the graph is built.

A model's tasks (``model_tasks``):

* its low-bit kernels at the batch buckets the graph calls them with (the ``_r<rows>`` suffix of the graph's
  function: 1 for single-token decode, a static one-row GEMV; 16 for batched decode, 64 for prefill, both
  dynamic-M tensor-core functions), tuned in our rule's knob space as static-M workloads
  (``tuning.tune_plan``, the same workloads as ``lowbit-tvm tune --shapes``); at build time the knob values
  of a record are applied to the graph's function (CUDA only);
* every other PrimFunc of the lowered graph (norms, residual adds, SwiGLU, embedding lookups, casts: what
  dlight schedules on CUDA), tuned in MetaSchedule's default space for the target with the schedule the
  build would use without a record (dlight's on CUDA, the plain function on the CPU) measured as one more
  candidate, so a record is kept only where it beat it.

Tasks MetaSchedule cannot take are listed with the reason and skipped: functions with symbolic shapes
(prefill's sequence length, the decode batch: MetaSchedule times concrete shapes), reshapes (Relax turns
them into views), and functions scheduled when the graph is traced (dlight fp matmuls). The paged KV
cache's attention and RoPE kernels are hand-scheduled TIR called through the cache object, not tasks.

``schedule_graph`` applies a database to a graph: our records to the low-bit functions, then
MetaSchedule's ``MetaScheduleApplyDatabase`` to the lowered graph before dlight (which leaves scheduled
functions alone) schedules what has no record.
"""
import re
from collections import Counter
from dataclasses import dataclass, fields, replace
from fnmatch import fnmatch

from ..kernel import OPAQUE_PATTERN
from ..schedules.w4a16_dispatch import Plan, mma_gemv_plan, plan, tensor_core_config
from ..tuning import tune_plan, tune_workload, unscheduled
from ..tvm_api import IS_SCHEDULED, dlight, ms, relax, relax_nn as nn, structural_hash, tvm
from .w4a16_linear import W4A16Linear

# dlight's rules in the order TVM's CUDA pipeline applies them (relax.backend.cuda.pipeline.legalize_passes).
_DLIGHT_RULES = ("Matmul", "GEMV", "Reduction", "GeneralReduction", "Fallback")
_GRAPH_NAME = re.compile(r"^(?P<op>.+)_r(?P<rows>\d+)$")
# Why a task is not tuned.
SCHEDULED = "scheduled when the graph is traced"
RESHAPE = "a reshape (Relax turns it into a view)"
SYMBOLIC = "symbolic shape (MetaSchedule times concrete shapes)"
NOT_CALL_TIR = "not called with call_tir: a paged KV cache kernel (TVM's hand-scheduled attention, RoPE, KV append)"


@dataclass(frozen=True)
class ModelTask:
    """One tuning task of a model graph.

    Attributes
    ----------
    name : str
        The graph function's name (low-bit ones end in ``_r<rows>``).
    kind : str
        ``"low-bit"`` (our rule's knob space) or ``"tir"`` (MetaSchedule's default space).
    weight : int
        How many calls of it the graph holds (low-bit: layers of that shape).
    skip : str
        Why it is not tuned; empty when it is tunable.
    workload : tvm.IRModule or None
        The unscheduled function (``"tir"`` tasks).
    plan : Plan or None
        The static-M plan whose record serves the graph's function (``"low-bit"`` tasks).
    """

    name: str
    kind: str
    weight: int
    skip: str = ""
    workload: object = None
    plan: Plan | None = None


@dataclass(frozen=True)
class TaskSources:
    """Where the scheduled functions of a built graph came from."""

    from_database: int
    by_default: int

    def summary(self, folder) -> str:
        """A one-line report for the build log."""
        return (f"tuning database {folder}: {self.from_database} of {self.from_database + self.by_default} tasks "
                f"from the database, {self.by_default} by defaults (dlight / rule defaults)")


def model_tasks(recipe, target) -> list:
    """The tuning tasks of ``recipe``'s graph for ``target`` (see the module docstring), largest weight first."""
    from .builder import graph  # pylint: disable=import-outside-toplevel

    model, mod, _ = graph(recipe, target)
    tasks = lowbit_tasks(mod, model, target) + tir_tasks(lower(mod, target), target)
    return sorted(tasks, key=lambda t: (bool(t.skip), -t.weight, t.name))


def select(tasks: list, patterns=None) -> list:
    """The tunable tasks whose names match one of ``patterns`` (``fnmatch``; None: all)."""
    return [t for t in tasks if not t.skip and (not patterns or any(fnmatch(t.name, p) for p in patterns))]


def tune_tasks(tasks: list, target, out_dir, trials: int, progress: bool = True, strategy: str = "evolutionary") -> list:
    """Tune ``tasks`` one after another into the database in ``out_dir`` (merged, best record kept).

    ``strategy`` is MetaSchedule's search strategy for the ``"tir"`` tasks (``tuning.tune_workload``).

    Returns
    -------
    list of (ModelTask, float or None)
        Each task with its best measured time in microseconds (None when no candidate ran).
    """
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    results = []
    bar = tqdm(tasks, desc="tuning", unit="task", disable=not progress)
    for task in bar:
        bar.set_postfix_str(task.name)
        if task.kind == "low-bit":
            best = tune_plan(task.plan, target, out_dir, trials)
        else:
            best = tune_workload(task.workload, target, out_dir, trials, baseline=default_schedule(task.workload, target),
                                 strategy=strategy)
        if progress:
            bar.write(f"{task.name}: best {best:.2f} us" if best else f"{task.name}: no valid candidate")
        results.append((task, best))
    return results


def lower(mod, target):
    """``mod`` through the passes of TVM's default Relax pipeline for ``target`` that come before scheduling
    (legalization; on CUDA also operator fusion): its PrimFuncs are then the functions that get compiled."""
    if target.kind.name == "cuda":
        passes = relax.backend.cuda.pipeline.library_dispatch_passes(target) + [
            p for p in relax.backend.cuda.pipeline.legalize_passes(target) if p.info.name != "ApplyDefaultSchedule"
        ]
    else:  # what relax.pipeline.default_build_pipeline legalizes with (no fusion on the CPU)
        passes = [relax.backend.DispatchSampling(), relax.backend.DispatchSortScan(), relax.transform.LegalizeOps()]
    with target:
        return tvm.transform.Sequential(passes)(mod)


def tir_tasks(lowered, target) -> list:
    """The ``"tir"`` tasks of a lowered graph: every function called with ``call_tir``, and (skipped, weight 0)
    the PrimFuncs the graph reaches otherwise (the KV cache's kernels)."""
    tasks = []
    for task in ms.relax_integration.extract_tasks(lowered, target):
        workload = task.dispatched[0]
        tasks.append(ModelTask(task.task_name, "tir", int(task.weight), _skip_reason(workload["main"]), workload))
    called = {structural_hash(t.workload) for t in tasks}
    for gvar, func in lowered.functions_items():
        if isinstance(func, tvm.tirx.PrimFunc):
            workload = ms.tir_integration._normalize_mod(func)  # pylint: disable=protected-access
            if structural_hash(workload) not in called:
                tasks.append(ModelTask(gvar.name_hint, "tir", 0, NOT_CALL_TIR, workload))
    return tasks


def lowbit_tasks(mod, model, target) -> list:
    """The ``"low-bit"`` tasks of a graph: one per (layer shape, rows bucket) it calls (CUDA only: on the
    CPU the low-bit kernels are plain dynamic-M TensorIR, listed among the ``"tir"`` tasks)."""
    if target.kind.name != "cuda":
        return []
    return [ModelTask(name, "low-bit", count, plan=lowbit_plan(op, rows))
            for name, op, rows, count in _lowbit_functions(mod, model)]


def lowbit_plan(op, rows: int) -> Plan:
    """The static-M plan whose record serves the graph function of ``op`` (the graph's op variant) at ``rows``:
    the one-row GEMV on tensor-core weights where the graph calls it, else the tensor-core rule at ``rows``."""
    if rows == 1:
        gemv = mma_gemv_plan(op.with_m(1))
        if gemv is not None:
            return gemv
    dynamic = plan(op.with_m(None))
    return Plan(dynamic.rule, dynamic.op.with_m(rows), tensor_core_config(op, rows))


def config_from_trace(chosen: Plan, trace):
    """The knob values a trace of ``tuning.plan_space(chosen, ...)`` sampled, as a config (the fixed knobs are
    ``chosen.config``'s, as in that space); None when the trace holds no such decisions (a record committed
    untuned, e.g. a sweep's)."""
    decided = [(inst, trace.decisions[inst]) for inst in trace.insts if inst.kind.name == "SampleCategorical"]
    names = [f.name for f in fields(chosen.config) if f.name not in chosen.rule.FIXED_WHEN_TUNING]
    if not decided or len(decided) != len(names):
        return None
    values = {name: int(inst.attrs[0][int(decision)]) for name, (inst, decision) in zip(names, decided)}
    return replace(chosen.config, **values)


def default_schedule(workload, target):
    """The schedule the build gives ``workload`` without a record: dlight's on CUDA, none on the CPU."""
    func = workload["main"]
    if target.kind.name != "cuda":
        return unscheduled(workload)
    for name in _DLIGHT_RULES:
        space = getattr(dlight.gpu, name)().apply(func, target, False)
        if space is not None:
            return space[0] if isinstance(space, list) else space
    return None


def schedule_graph(mod, model, target, database):
    """Lower the graph ``mod`` (of ``model``) and schedule what ``database`` holds records for.

    The rest is left to the build pipeline (dlight on CUDA; dlight skips scheduled functions). On CUDA every
    PrimFunc is then marked opaque, so the pipeline's own fusion pass does not fuse the lowered functions again.

    Returns
    -------
    (tvm.IRModule, TaskSources)
    """
    lowbit_hits, lowbit_total = 0, 0
    if target.kind.name == "cuda":
        mod, lowbit_hits, lowbit_total = _apply_lowbit_records(mod, model, target, database)
    mod = lower(mod, target)
    tunable = [t for t in tir_tasks(mod, target) if t.skip in ("", SYMBOLIC)]
    hits = 0
    if database is not None:
        hits = sum(bool(database.has_workload(t.workload)) for t in tunable)
        with target, database:
            mod = relax.transform.MetaScheduleApplyDatabase()(mod)
    if target.kind.name == "cuda":
        mod = _all_opaque(mod)
    sources = TaskSources(lowbit_hits + hits, lowbit_total - lowbit_hits + len(tunable) - hits)
    return mod, sources


def _apply_lowbit_records(mod, model, target, database):
    hits, total = 0, 0
    for name, op, rows, _ in _lowbit_functions(mod, model):
        total += 1
        func = None if database is None else tuned_lowbit_function(op, rows, target, database)
        if func is not None:
            mod[mod.get_global_var(name)] = func
            hits += 1
    return mod, hits, total


def tuned_lowbit_function(op, rows: int, target, database):
    """The graph function of ``op`` at ``rows`` scheduled with the knobs of its record, or None."""
    chosen = lowbit_plan(op, rows)
    workload = ms.tir_integration._normalize_mod(chosen.op.prim_func())  # pylint: disable=protected-access
    if not database.has_workload(workload):
        return None
    record = database.query_tuning_record(workload, target, "main")
    config = None if record is None else config_from_trace(chosen, record.trace)
    if config is None:
        return None
    dynamic = plan(op.with_m(None))  # the graph's function is dynamic-M unless the plan is the one-row GEMV's
    graph_op = dynamic.op if chosen.rule.name == dynamic.rule.name else chosen.op
    sch = chosen.rule.apply(graph_op.prim_func(), target, config=config)
    attrs = {"op_pattern": OPAQUE_PATTERN, IS_SCHEDULED: True}
    return sch.mod["main"].with_attrs(attrs).without_attr("global_symbol")


def _lowbit_functions(mod, model):
    """``(function name, graph op, rows, layers)`` of every low-bit function the graph ``mod`` calls."""
    layers = Counter(m.op for m in _modules(model) if isinstance(m, W4A16Linear))
    by_name = {op.name: op for op in layers}
    found = []
    for gvar in mod.get_global_vars():
        match = _GRAPH_NAME.match(gvar.name_hint)
        if match and match["op"] in by_name:
            op = by_name[match["op"]]
            found.append((gvar.name_hint, op, int(match["rows"]), layers[op]))
    return sorted(found, key=lambda item: item[0])


def _modules(module):
    yield module
    children = list(module) if isinstance(module, nn.ModuleList) else list(vars(module).values())
    for child in children:
        if isinstance(child, nn.Module):
            yield from _modules(child)


def _skip_reason(func) -> str:
    attrs = func.attrs or {}
    if attrs.get(IS_SCHEDULED, False):
        return SCHEDULED
    if relax.analysis.has_reshape_pattern(func):
        return RESHAPE
    try:
        ms.arg_info.ArgInfo.from_prim_func(func)
    except (TypeError, ValueError):
        return SYMBOLIC
    return ""


def _all_opaque(mod):
    for gvar, func in list(mod.functions_items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            mod.update_func(gvar, func.with_attr("op_pattern", OPAQUE_PATTERN))
    return mod
