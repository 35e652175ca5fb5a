"""Build W4A16 kernels: pick the rule, apply tuned records or the default config, compile."""
from dataclasses import dataclass

from .ops.w4a16 import W4A16Op
from .schedules.w4a16_dispatch import GEMV_MAX_M, Plan, ShapeError, plan
from .tvm_api import tvm

PASS_CONFIG = {"tirx.use_async_copy": 1}

# Shared memory a block may opt into, per architecture (the tensor-core kernel uses dynamic shared
# memory beyond the default 48 KB).
MAX_SHARED = {"sm_80": 166912, "sm_86": 101376, "sm_89": 101376, "sm_90": 232448, "sm_90a": 232448}


def default_target(arch: str | None = None):
    """The CUDA target for ``arch`` (default: the local GPU's, else sm_90) with its shared-memory limit."""
    from .codegen import cuda_target, detect_cuda_arch  # pylint: disable=import-outside-toplevel

    arch = arch or detect_cuda_arch() or "sm_90"
    return cuda_target(arch, max_shared_memory_per_block=MAX_SHARED.get(arch, 49152))


@dataclass
class W4A16Kernel:
    """A compiled W4A16 kernel for one workload.

    Attributes
    ----------
    op : W4A16Op
        The workload (with the decode dtype its rule uses).
    rule : str
        The schedule rule that produced it.
    source : str
        ``"tuned"`` when a tuning record was applied, else ``"default"``.
    module : tvm.runtime.Module
        The runnable module.
    """

    op: W4A16Op
    rule: str
    source: str
    module: object

    def __call__(self, *args):
        """Run on ``(x, packed, scales[, zeros], out)`` (TVM tensors or DLPack tensors such as torch's).

        Raises
        ------
        ShapeError
            If the arguments' count, shapes or dtypes do not fit the workload.
        """
        check_args(self.op, args)
        self.function(*args)

    @property
    def function(self):
        """The compiled function without argument checks (for hot loops and timing)."""
        return self.module[self.op.name]


def _expected_args(op: W4A16Op, m) -> list:
    groups = op.scheme.groups(op.k)
    expected = [("x", (m, op.k), "float16"), ("packed", (op.n, op.k // 8), "uint32")]
    expected.append(("scales", (op.n, groups), "float16"))
    if not op.scheme.symmetric:
        expected.append(("zeros", (op.n, groups), "float16"))
    expected.append(("out", (m, op.n), "float16"))
    return expected


def check_args(op: W4A16Op, args) -> None:
    """Check call arguments against ``op``; a clear ``ShapeError`` instead of a TVM type error."""
    if not args:
        raise ShapeError(f"{op.name}: no arguments; expected x, packed, scales[, zeros], out")
    m = op.m if op.m is not None else tuple(args[0].shape)[0]
    expected = _expected_args(op, m)
    if len(args) != len(expected):
        names = ", ".join(name for name, _, _ in expected)
        raise ShapeError(f"{op.name}: expected {len(expected)} arguments ({names}), got {len(args)}")
    for arg, (name, shape, dtype) in zip(args, expected):
        got_shape = tuple(int(d) for d in arg.shape)
        got_dtype = str(arg.dtype).replace("torch.", "")
        if got_shape != tuple(shape) or got_dtype != dtype:
            raise ShapeError(f"{op.name}: {name} must be {dtype} {tuple(shape)}, got {got_dtype} {got_shape}")


@dataclass
class DynamicW4A16Kernel:
    """A dynamic-M W4A16 kernel: one GEMV kernel per M up to ``GEMV_MAX_M``, tensor cores above.

    Attributes
    ----------
    small : dict of int to W4A16Kernel
        The GEMV kernels by M.
    large : W4A16Kernel
        The dynamic-M tensor-core kernel.
    """

    small: dict
    large: W4A16Kernel

    def kernel_for(self, m: int) -> W4A16Kernel:
        """The kernel that serves ``m`` rows."""
        return self.small.get(int(m), self.large)

    def __call__(self, x, *args):
        """Run on ``(x, packed, scales[, zeros], out)``, choosing the kernel by ``x.shape[0]``."""
        self.kernel_for(x.shape[0])(x, *args)


def schedule(op: W4A16Op, target, database=None):
    """The scheduled IRModule for ``op`` and where its schedule came from.

    Parameters
    ----------
    op : W4A16Op
        The workload.
    target : tvm.target.Target
        A CUDA target.
    database : tvm.s_tir.meta_schedule.Database or None
        Tuning records; used when it holds this workload.

    Returns
    -------
    (tvm.IRModule, Plan, str)
        The module, the rule plan, and ``"tuned"`` or ``"default"``.
    """
    chosen: Plan = plan(op)
    func = chosen.op.prim_func()
    if database is not None:
        from .tuning import lookup  # pylint: disable=import-outside-toplevel

        tuned = lookup(database, func, target)
        if tuned is not None:
            return tuned, chosen, "tuned"
    sch = chosen.rule.apply(func, target, tunable=False, config=chosen.config)
    return sch.mod, chosen, "default"


def committed_database(target):
    """The committed tuning database for ``target``'s arch (``tuning_logs/<arch>``), or None."""
    from .codegen import arch_of  # pylint: disable=import-outside-toplevel
    from .tuning import database_dir, open_database  # pylint: disable=import-outside-toplevel

    return open_database(database_dir(arch_of(target)))


def build(op: W4A16Op, target, database="auto"):
    """Schedule and compile ``op`` for ``target``.

    Parameters
    ----------
    op : W4A16Op
        The workload.
    target : tvm.target.Target
        A CUDA target.
    database : "auto", Database or None
        Tuning records to apply when they hold this workload; ``"auto"`` uses the committed
        ``tuning_logs/<arch>`` database, None uses the rule's default config. ``kernel.source`` says
        which was used.

    Returns
    -------
    W4A16Kernel or DynamicW4A16Kernel
        The latter when ``op.m`` is None (dynamic M): it dispatches on the rows of each call.
    """
    if isinstance(database, str) and database == "auto":
        database = committed_database(target)
    if op.m is None:
        small = {m: _build_static(op.with_m(m), target, database) for m in range(1, GEMV_MAX_M + 1)}
        return DynamicW4A16Kernel(small, _build_static(op, target, database))
    return _build_static(op, target, database)


def _build_static(op: W4A16Op, target, database) -> W4A16Kernel:
    from .codegen import build_module  # pylint: disable=import-outside-toplevel

    mod, chosen, source = schedule(op, target, database)
    with tvm.transform.PassContext(config=PASS_CONFIG):
        module = build_module(mod, target)
    return W4A16Kernel(chosen.op, chosen.rule.name, source, module)
