"""Build GQSA block-sparse int4 kernels: plan (rule, config, slots per row), tuned record or default, compile.

Usage::

    qw = gqsa_quantize(weight, GQSAScheme(group=64, sparsity=0.5))
    kernel = build_for(qw, m=1, target=default_target())
    kernel(x, *kernel.prepare(qw), out)          # x [m, K] fp16, out [m, N] fp16 (torch or TVM tensors)
"""
from dataclasses import dataclass

from .kernel import PASS_CONFIG, committed_database
from .ops.gqsa import GQSAOp
from .quant.gqsa import GQSAWeight, to_slots
from .schedules.gqsa_dispatch import GQSAPlan, plan
from .schedules.w4a16_dispatch import ShapeError
from .tvm_api import tvm


@dataclass
class GQSAKernel:
    """A compiled GQSA kernel.

    Attributes
    ----------
    op : GQSAOp
        The workload (its ``slots`` is what ``prepare`` pads rows to).
    rule : str
        The schedule rule.
    source : str
        ``"tuned"`` or ``"default"``.
    module : tvm.runtime.Module
    """

    op: GQSAOp
    rule: str
    source: str
    module: object

    def prepare(self, qw: GQSAWeight) -> list:
        """``[words, scales, indices]`` of ``qw`` padded to ``op.slots`` per row (NumPy; copy to the device once).

        Raises
        ------
        ShapeError
            If ``qw`` has another shape or group, or a row keeps more groups than ``op.slots``.
        """
        kept = int(qw.row_counts.max()) if qw.nnz else 0
        if qw.shape != (self.op.n, self.op.k) or qw.scheme.group != self.op.group or kept > self.op.slots:
            raise ShapeError(
                f"{self.op.name}: weight is {qw.shape} group {qw.scheme.group} with up to {kept} groups per row; "
                f"the kernel wants ({self.op.n}, {self.op.k}) group {self.op.group}, at most {self.op.slots} per row"
            )
        return list(to_slots(qw, self.op.slots))

    def __call__(self, *args):
        """Run on ``(x, words, scales, indices, out)``; raises ``ShapeError`` on wrong shapes or dtypes."""
        check_args(self.op, args)
        self.function(*args)

    @property
    def function(self):
        """The compiled function without argument checks."""
        return self.module[self.op.name]


def check_args(op: GQSAOp, args) -> None:
    """Check call arguments against ``op``'s ``arg_specs``; a clear ``ShapeError`` otherwise."""
    specs = op.arg_specs()
    if len(args) != len(specs):
        names = ", ".join(s[0] for s in specs)
        raise ShapeError(f"{op.name}: expected {len(specs)} arguments ({names}), got {len(args)}")
    for arg, (name, shape, dtype) in zip(args, specs):
        got_shape = tuple(int(d) for d in arg.shape)
        got_dtype = str(arg.dtype).replace("torch.", "")
        if got_shape != shape or got_dtype != dtype:
            raise ShapeError(f"{op.name}: {name} must be {dtype} {shape}, got {got_dtype} {got_shape}")


def schedule(chosen: GQSAPlan, target, database=None):
    """``(IRModule, "tuned" | "default")`` for a plan: the database's record when it has one, else the config."""
    func = chosen.op.prim_func()
    if database is not None:
        from .tuning import lookup  # pylint: disable=import-outside-toplevel

        tuned = lookup(database, func, target)
        if tuned is not None:
            return tuned, "tuned"
    return chosen.rule.apply(func, target, config=chosen.config).mod, "default"


def build(n: int, k: int, group: int, kept: int, m: int, target, database=None) -> GQSAKernel:
    """Compile the GQSA kernel for ``m`` batch rows of an ``[N, K]`` weight whose fullest row keeps ``kept``
    groups of ``group`` weights.

    Parameters
    ----------
    database : "auto", Database or None
        Tuning records (``"auto"``: the committed ``tuning_logs/<arch>``, which holds no GQSA records yet and takes
        minutes to search on a small CPU); None (default) uses the rule's default config.
    """
    chosen = plan(n, k, group, kept, m)
    if isinstance(database, str) and database == "auto":
        database = committed_database(target)
    mod, source = schedule(chosen, target, database)
    from .codegen import build_module  # pylint: disable=import-outside-toplevel

    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(mod, target)
    return GQSAKernel(chosen.op, chosen.rule.name, source, module)


def build_for(qw: GQSAWeight, m: int, target, database=None) -> GQSAKernel:
    """``build`` for the shape, group and fullest row of ``qw``."""
    kept = int(qw.row_counts.max()) if qw.nnz else 0
    return build(qw.shape[0], qw.shape[1], qw.scheme.group, kept, m, target, database)


def tune(n: int, k: int, group: int, kept: int, m: int, target, out_dir, trials: int = 32, work_dir=None):
    """MetaSchedule search over the GEMV rule's knobs (``GQSAGemv.SPACE``) for one workload; the best record
    (never worse than the default config, which is measured beside the candidates) goes to ``out_dir``.

    Parameters are those of ``build``; ``target`` must be the local GPU (candidates are timed on it).

    Returns
    -------
    float or None
        The best measured time in microseconds, None when no candidate ran.
    """
    import tempfile  # pylint: disable=import-outside-toplevel

    from .tuning import _commit_default, build_with_async_copy, cost_model_name, open_database, prune
    from .tvm_api import ms  # pylint: disable=import-outside-toplevel

    chosen = plan(n, k, group, kept, m)
    func = chosen.op.prim_func()

    def space(sch):
        if not chosen.rule.schedule(sch, target, tunable=True):
            raise ValueError(f"rule {chosen.rule.name} does not apply to {chosen.op.name}")
        return sch

    with tempfile.TemporaryDirectory() as tmp:
        db = ms.tir_integration.tune_tir(
            mod=func, target=target, work_dir=str(work_dir or tmp), max_trials_global=trials,
            num_trials_per_iter=min(trials, 16), space=space, cost_model=cost_model_name(),
            builder=ms.builder.LocalBuilder(f_build=build_with_async_copy, timeout_sec=300),
        )
        _commit_default(db, chosen, func, target)
        times = [sum(float(t) for t in r.run_secs) / len(r.run_secs) for r in db.get_all_tuning_records() if r.run_secs]
        db.dump_pruned(open_database(out_dir, create=True))
    prune(out_dir)
    return min(times) * 1e6 if times else None


def commit_measured(database, n: int, k: int, group: int, kept: int, m: int, config, seconds: float, target) -> None:
    """Add a record to ``database`` (``lowbit_tvm.tuning.open_database``): the workload's plan scheduled with
    ``config``, measured at ``seconds`` on the GPU (configs timed outside MetaSchedule, e.g. by
    ``benchmarks/bench_gqsa.py``'s sweep). Run ``lowbit_tvm.tuning.prune`` on its folder afterwards."""
    from .tuning import _commit_record  # pylint: disable=import-outside-toplevel
    from .tvm_api import Schedule  # pylint: disable=import-outside-toplevel

    chosen = plan(n, k, group, kept, m)
    func = chosen.op.prim_func()
    sch = Schedule(func)
    chosen.rule.schedule(sch, target, tunable=False, config=config)
    _commit_record(database, func, sch.trace, [seconds], target)
