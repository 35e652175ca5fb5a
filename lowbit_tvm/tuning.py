"""MetaSchedule tuning of our rules' knobs, and the per-architecture databases under ``tuning_logs/``.

The search space of a workload is its rule applied with ``tunable=True``: every knob is a
``sample_categorical`` decision, and MetaSchedule searches those decisions (xgboost cost model where
xgboost imports, random otherwise). Only the best record per workload is kept in the committed
database.
"""
import os
import shutil
import tempfile
from pathlib import Path

from .kernel import PASS_CONFIG
from .ops.w4a16 import W4A16Op
from .schedules.w4a16_dispatch import plan
from .tuning_build import build_plain
from .tvm_api import ms, tvm

TUNING_LOGS = Path(__file__).resolve().parent.parent / "tuning_logs"
_WORKLOADS = "database_workload.json"
_RECORDS = "database_tuning_record.json"


def database_dir(arch: str, root: Path | None = None) -> Path:
    """Where the database of ``arch`` lives (``tuning_logs/<arch>``)."""
    return (root or TUNING_LOGS) / arch


def open_database(folder: Path, create: bool = False):
    """The JSON database in ``folder``; None when it does not exist and ``create`` is False."""
    from .schedules import gemv_intrinsics, intrinsics  # pylint: disable=import-outside-toplevel

    folder = Path(folder)
    if not create and not (folder / _RECORDS).exists():
        return None
    intrinsics.register()  # the stored traces name our tensor intrinsics
    gemv_intrinsics.register()  # (GEMV records: the word dot product)
    folder.mkdir(parents=True, exist_ok=True)
    return ms.database.JSONDatabase(
        path_workload=str(folder / _WORKLOADS), path_tuning_record=str(folder / _RECORDS), allow_missing=True
    )


def lookup(database, func, target):
    """The tuned IRModule of ``func`` in ``database``, or None when it holds no record for it."""
    sch = ms.tir_integration.compile_tir(database, func, target)
    return None if sch is None else sch.mod


def build_with_async_copy(mod, target, _params=None):
    """MetaSchedule's build step with our pass config (async global->shared copies) and pipeline."""
    from .codegen import pipeline  # pylint: disable=import-outside-toplevel

    with tvm.transform.PassContext(opt_level=3, config=PASS_CONFIG):
        return tvm.tirx.build(mod, target=target, pipeline=pipeline.register())


def cost_model_name() -> str:
    """``"xgb"`` where xgboost imports, else ``"random"``."""
    try:
        import xgboost  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

        return "xgb"
    except ImportError:
        return "random"


def tune_op(op: W4A16Op, target, out_dir: Path, trials: int = 64, work_dir: Path | None = None):
    """Tune one workload and add its best record to the database in ``out_dir``.

    Parameters
    ----------
    op : W4A16Op
        The workload (static M).
    target : tvm.target.Target
        The GPU target (must be the local GPU: candidates are timed on it).
    out_dir : Path
        The database folder (``tuning_logs/<arch>``); created if missing, existing records kept.
    trials : int
        Measured candidates.
    work_dir : Path or None
        MetaSchedule's scratch folder (a temporary one by default).

    Returns
    -------
    float or None
        The best measured time in microseconds, None when no candidate ran.
    """
    return tune_plan(plan(op), target, out_dir, trials, work_dir)


def tune_plan(chosen, target, out_dir: Path, trials: int = 64, work_dir: Path | None = None):
    """``tune_op`` for a given plan (a rule, the static-M op variant it schedules and its default config).

    The search space is the rule's knobs (``plan_space``); the rule's default config is measured as a candidate too.
    """
    func = chosen.op.prim_func()
    builder = ms.builder.LocalBuilder(f_build=build_with_async_copy, timeout_sec=300)
    return _tune(func, target, out_dir, trials, plan_space(chosen, target), builder,
                 lambda db: _commit_default(db, chosen, func, target), work_dir)


def plan_space(chosen, target):
    """MetaSchedule's space function for ``chosen``: its rule with every knob sampled, except those in
    ``FIXED_WHEN_TUNING``, which keep ``chosen.config``'s values."""
    def space(sch):
        if not chosen.rule.schedule(sch, target, tunable=True, config=chosen.config):
            raise ValueError(f"rule {chosen.rule.name} does not apply to {chosen.op.name}")
        return sch

    return space


def unscheduled(mod):
    """A schedule of ``mod`` that changes nothing, with one lookup in its trace: MetaSchedule treats a record
    with an empty trace as invalid and drops it from a pruned database."""
    from .tvm_api import Schedule  # pylint: disable=import-outside-toplevel

    sch = Schedule(mod)
    sch.get_child_blocks(sch.get_sblock("root"))
    return sch


def tune_workload(mod, target, out_dir: Path, trials: int, baseline=None, work_dir: Path | None = None,
                  strategy: str = "evolutionary"):
    """Tune a TensorIR workload in MetaSchedule's default space for ``target``; add its best record to
    the database in ``out_dir`` (merged: the best record per workload is kept).

    Parameters
    ----------
    mod : tvm.IRModule or tvm.tirx.PrimFunc
        The unscheduled workload (an extracted task's module).
    target : tvm.target.Target
        CUDA (candidates are timed on the local GPU) or llvm (timed on this CPU).
    out_dir : Path
        The database folder.
    trials : int
        Measured candidates.
    baseline : tvm.s_tir.Schedule or None
        A schedule of ``mod`` measured as one more candidate (what the build uses without a record:
        dlight's on a GPU), so the pruned database keeps a searched schedule only where it beat it.
    work_dir : Path or None
        MetaSchedule's scratch folder (a temporary one by default).
    strategy : str
        MetaSchedule's search strategy: ``"evolutionary"`` (cost-model guided) or ``"replay-trace"``
        (random decisions: no population to evolve, for a few trials).

    Returns
    -------
    float or None
        The best measured time in microseconds, None when no candidate ran.
    """
    workload = ms.tir_integration._normalize_mod(mod)  # pylint: disable=protected-access
    builder = ms.builder.LocalBuilder(f_build=build_plain, timeout_sec=300)

    def commit_baseline(db):
        if baseline is not None:
            _commit_schedule(db, workload, baseline, target, builder)

    return _tune(workload, target, out_dir, trials, "post-order-apply", builder, commit_baseline, work_dir, strategy)


def tuning_target(target):
    """``target`` as MetaSchedule needs it: a CPU target must say how many cores it may use."""
    if target.kind.name != "llvm" or "num-cores" in target.attrs:
        return target
    return tvm.target.Target(dict(target.export(), **{"num-cores": os.cpu_count() or 1}))


def arch_key(target) -> str:
    """The ``tuning_logs`` folder name of ``target``: the CUDA arch (``sm_90``), else the target kind."""
    if target.kind.name == "cuda":
        from .codegen import arch_of  # pylint: disable=import-outside-toplevel

        return arch_of(target)
    return target.kind.name


def _tune(mod, target, out_dir, trials, space, builder, commit_extra, work_dir, strategy="evolutionary"):
    with tempfile.TemporaryDirectory() as tmp:
        db = ms.tir_integration.tune_tir(
            mod=mod,
            target=tuning_target(target),
            work_dir=str(work_dir or tmp),
            max_trials_global=trials,
            num_trials_per_iter=min(trials, 16),
            space=space,
            strategy=strategy,
            cost_model=cost_model_name(),
            builder=builder,
        )
        commit_extra(db)
        records = db.get_all_tuning_records()
        db.dump_pruned(open_database(out_dir, create=True))
    prune(out_dir)
    times = [_mean(r.run_secs) for r in records if r.run_secs]
    return min(times) * 1e6 if times else None


def commit_measured(out_dir: Path, op: W4A16Op, config, seconds: float, target) -> None:
    """Add a record: ``op`` scheduled by its rule with ``config``, measured at ``seconds`` on the GPU.

    For configs timed outside MetaSchedule (``benchmarks/sweep_w4a16.py``); ``prune`` afterwards keeps
    the fastest record per workload.
    """
    from .tvm_api import Schedule  # pylint: disable=import-outside-toplevel

    chosen = plan(op)
    func = chosen.op.prim_func()
    sch = Schedule(func)
    if not chosen.rule.schedule(sch, target, tunable=False, config=config):
        raise ValueError(f"rule {chosen.rule.name} does not apply to {op.name}")
    _commit_record(open_database(out_dir, create=True), func, sch.trace, [seconds], target)


def _commit_record(db, func, trace, run_secs, target) -> None:
    """Add ``trace`` (a schedule of ``func``) measured at ``run_secs`` to ``db``."""
    workload = db.commit_workload(ms.tir_integration._normalize_mod(func))  # pylint: disable=protected-access
    args_info = ms.arg_info.ArgInfo.from_prim_func(func)
    db.commit_tuning_record(ms.database.TuningRecord(trace, workload, run_secs, target, args_info))


def prune(folder: Path) -> None:
    """Rewrite the database in ``folder`` keeping only the best record of each workload."""
    folder = Path(folder)
    merged = open_database(folder)
    with tempfile.TemporaryDirectory() as tmp:
        merged.dump_pruned(open_database(Path(tmp), create=True))
        for name in (_WORKLOADS, _RECORDS):
            shutil.copyfile(Path(tmp) / name, folder / name)


def _mean(run_secs) -> float:
    return float(sum(float(t) for t in run_secs) / len(run_secs))


def _commit_default(db, chosen, func, target):
    """Measure the rule's default config like any candidate and add it to ``db``.

    The pruned database then keeps a searched schedule only where it beat the default.
    """
    from .tvm_api import Schedule  # pylint: disable=import-outside-toplevel

    sch = Schedule(func)
    chosen.rule.schedule(sch, target, tunable=False, config=chosen.config)
    _commit_schedule(db, func, sch, target, ms.builder.LocalBuilder(f_build=build_with_async_copy, timeout_sec=300))


def _commit_schedule(db, func, sch, target, builder):
    """Build and time ``sch`` (a schedule of ``func``) on ``target``'s device; add it to ``db`` if it ran."""
    func = ms.tir_integration._normalize_mod(func)["main"]  # pylint: disable=protected-access
    (built,) = builder.build([ms.builder.BuilderInput(sch.mod, tuning_target(target))])
    if built.error_msg:
        return
    args_info = ms.arg_info.ArgInfo.from_prim_func(func)
    runner_input = ms.runner.RunnerInput(built.artifact_path, target.kind.name, args_info)
    (future,) = ms.runner.LocalRunner().run([runner_input])
    result = future.result()
    if result.error_msg or not result.run_secs:
        return
    _commit_record(db, func, sch.trace, result.run_secs, target)
