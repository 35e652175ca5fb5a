"""MetaSchedule tuning of our rules' knobs, and the per-architecture databases under ``tuning_logs/``.

The search space of a workload is its rule applied with ``tunable=True``: every knob is a
``sample_categorical`` decision, and MetaSchedule searches those decisions (xgboost cost model where
xgboost imports, random otherwise). Only the best record per workload is kept in the committed
database.
"""
import shutil
import tempfile
from pathlib import Path

from .kernel import PASS_CONFIG
from .ops.w4a16 import W4A16Op
from .schedules.w4a16_dispatch import plan
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


def _space(op: W4A16Op, target):
    chosen = plan(op)

    def space(sch):
        if not chosen.rule.schedule(sch, target, tunable=True):
            raise ValueError(f"rule {chosen.rule.name} does not apply to {op.name}")
        return sch

    return chosen, space


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
    chosen, space = _space(op, target)
    func = chosen.op.prim_func()
    with tempfile.TemporaryDirectory() as tmp:
        scratch = str(work_dir or tmp)
        db = ms.tir_integration.tune_tir(
            mod=func,
            target=target,
            work_dir=scratch,
            max_trials_global=trials,
            num_trials_per_iter=min(trials, 16),
            space=space,
            cost_model=cost_model_name(),
            builder=ms.builder.LocalBuilder(f_build=build_with_async_copy, timeout_sec=300),
        )
        _commit_default(db, chosen, func, target)
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
    builder = ms.builder.LocalBuilder(f_build=build_with_async_copy, timeout_sec=300)
    (built,) = builder.build([ms.builder.BuilderInput(sch.mod, target)])
    if built.error_msg:
        return
    args_info = ms.arg_info.ArgInfo.from_prim_func(func)
    (future,) = ms.runner.LocalRunner().run([ms.runner.RunnerInput(built.artifact_path, "cuda", args_info)])
    result = future.result()
    if result.error_msg or not result.run_secs:
        return
    _commit_record(db, func, sch.trace, result.run_secs, target)
