"""Build W4A16 kernels: pick the rule, apply tuned records or the default config, compile."""
from dataclasses import dataclass

from .ops.w4a16 import W4A16Op
from .quant import QuantizedWeight
from .quant.mma_layout import to_mma_layout
from .schedules.w4a16_dispatch import Plan, ShapeError, mma_gemv_plan, plan, tensor_core_config
from .tvm_api import IS_SCHEDULED, tvm

# Batch-size buckets of a dynamic-M kernel: one tensor-core function per bucket (its tiles sized for
# that many rows); the last also serves every larger batch.
DYNAMIC_BUCKETS = (16, 32, 64, 256)

# Async global->shared copies; no TIR common-subexpression elimination: it hides the lane index of
# warp-memory stores from LowerWarpMemory (nvcc does its own CSE).
PASS_CONFIG = {"tirx.use_async_copy": 1, "tirx.disable_cse_tir": True}

# Relax's operator pattern "opaque" (never fused with neighbouring operators).
OPAQUE_PATTERN = 8

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
        The workload (with the decode dtype and weight layout its rule uses).
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

    def prepare(self, qw: QuantizedWeight) -> list:
        """The weight arguments ``[packed, scales(, zeros)]`` of this kernel for ``qw`` (NumPy arrays).

        ``packed`` is re-laid out offline to what the kernel reads (``op.layout``); copy the arrays to the
        device once and pass them to every call.
        """
        return prepare_weights(self.op, qw)

    def __call__(self, *args):
        """Run on ``(x, packed, scales[, zeros], out)`` (TVM tensors or DLPack tensors such as torch's).

        The weight arguments are what ``prepare`` returns.

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


def prepare_weights(op: W4A16Op, qw: QuantizedWeight) -> list:
    """``[packed, scales(, zeros)]`` of ``qw`` in the layout ``op`` reads (see ``W4A16Kernel.prepare``)."""
    if (qw.shape[0], qw.shape[1]) != (op.n, op.k) or qw.scheme != op.scheme:
        raise ShapeError(
            f"{op.name}: weight is {qw.scheme.name} {qw.shape}, kernel wants {op.scheme.name} ({op.n}, {op.k})"
        )
    packed = to_mma_layout(qw.packed) if op.layout == "mma" else qw.packed
    return [packed, qw.scales] + ([] if qw.zeros is None else [qw.zeros])


@dataclass
class DynamicW4A16Kernel:
    """A dynamic-M W4A16 kernel: one module with a tensor-core function per batch-size bucket.

    Every function reads the same ``"mma"``-layout weights, so a model keeps one copy of them.

    Attributes
    ----------
    op : W4A16Op
        The workload (``m`` is None).
    buckets : tuple of (int, str)
        ``(largest M, function name)`` per bucket, ascending; the last serves every larger M too.
    module : tvm.runtime.Module
        The runnable module holding every bucket's function.
    """

    op: W4A16Op
    buckets: tuple
    module: object
    rule: str = "w4a16-tensor-core"
    source: str = "default"

    def name_for(self, m: int) -> str:
        """The name of the function that serves ``m`` rows."""
        for bound, name in self.buckets:
            if m <= bound:
                return name
        return self.buckets[-1][1]

    def function_for(self, m: int):
        """The compiled function (without argument checks) that serves ``m`` rows."""
        return self.module[self.name_for(m)]

    def prepare(self, qw: QuantizedWeight) -> list:
        """The weight arguments for ``qw`` (see ``W4A16Kernel.prepare``)."""
        return prepare_weights(self.op, qw)

    def __call__(self, x, *args):
        """Run on ``(x, packed, scales[, zeros], out)``, choosing the function by ``x.shape[0]``."""
        check_args(self.op, (x, *args))
        self.function_for(int(x.shape[0]))(x, *args)


def _expected_args(op: W4A16Op, m) -> list:
    groups = op.scheme.groups(op.k)
    expected = [("x", (m, op.k), "float16"), ("packed", op.packed_shape, "uint32")]
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
        if not _is_contiguous(arg):
            raise ShapeError(f"{op.name}: {name} must be a contiguous (compact) array; pass a contiguous copy")


def _is_contiguous(arg) -> bool:
    if hasattr(arg, "is_contiguous"):  # torch
        return bool(arg.is_contiguous())
    flags = getattr(arg, "flags", None)  # numpy
    return True if flags is None else bool(flags["C_CONTIGUOUS"])


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
        The latter when ``op.m`` is None: tensor-core functions per batch-size bucket (rows padded to
        16) in one module, all reading one copy of the weights in the ``"mma"`` layout. Its buckets use the
        rule defaults (a tuning record is per static M).
    """
    if op.m is None:
        return _build_dynamic(op, target)
    if isinstance(database, str) and database == "auto":
        database = committed_database(target)
    mod, chosen, source = schedule(op, target, database)
    return W4A16Kernel(chosen.op, chosen.rule.name, source, _compile(mod, target))


def build_plan(chosen: Plan, target) -> W4A16Kernel:
    """Compile ``chosen`` (a rule, its op variant and config, e.g. from ``mma_gemv_plan``) for ``target``."""
    sch = chosen.rule.apply(chosen.op.prim_func(), target, config=chosen.config)
    return W4A16Kernel(chosen.op, chosen.rule.name, "default", _compile(sch.mod, target))


def graph_variant(op: W4A16Op, target) -> W4A16Op:
    """The op variant (weight layout, decode dtype) that a Relax graph calls for ``op`` on ``target``:
    the tensor-core rule's (``"mma"`` weights) on CUDA, the plain TensorIR on ``"rows"`` weights elsewhere."""
    if target.kind.name == "cuda":
        return plan(op.with_m(None)).op
    return op.with_m(None).with_layout("rows").with_decode("float32")


_GRAPH_FUNCTIONS = {}


def graph_function(op: W4A16Op, target, m_hint: int = 64):
    """The PrimFunc a Relax graph calls for the workload ``op`` (see ``graph_variant``).

    On CUDA it is scheduled for ``m_hint`` rows: a static one-row GEMV on the tensor-core weights when
    ``m_hint`` is 1 and a GEMV config tiles the shape (a single-token decode step), else the dynamic-M
    tensor-core kernel with the rule's default config for ``m_hint`` rows. It is marked scheduled and
    opaque, so Relax neither fuses it with its neighbours nor lets dlight re-schedule it. Cached per
    (op, target, m_hint): a model has many layers of few shapes.
    """
    key = (op.with_m(None), str(target), m_hint)
    if key not in _GRAPH_FUNCTIONS:
        if target.kind.name == "cuda":
            func = _cuda_graph_function(op, target, m_hint)
        else:
            func = graph_variant(op, target).prim_func()
        attrs = {"op_pattern": OPAQUE_PATTERN, IS_SCHEDULED: target.kind.name == "cuda"}
        _GRAPH_FUNCTIONS[key] = func.with_attr(attrs).without_attr("global_symbol")
    return _GRAPH_FUNCTIONS[key]


def _cuda_graph_function(op: W4A16Op, target, m_hint: int):
    gemv = mma_gemv_plan(op.with_m(1)) if m_hint == 1 else None
    if gemv is not None:
        return gemv.rule.apply(gemv.op.prim_func(), target, config=gemv.config).mod["main"]
    chosen = plan(op.with_m(None))
    return chosen.rule.apply(chosen.op.prim_func(), target, config=tensor_core_config(op, m_hint)).mod["main"]


def _compile(mod, target):
    from .codegen import build_module  # pylint: disable=import-outside-toplevel

    with tvm.transform.PassContext(config=PASS_CONFIG):
        return build_module(mod, target)


def _build_dynamic(op: W4A16Op, target) -> DynamicW4A16Kernel:
    chosen = plan(op)
    functions, buckets = {}, []
    for bound in DYNAMIC_BUCKETS:
        sch = chosen.rule.apply(chosen.op.prim_func(), target, config=tensor_core_config(op, bound))
        name = f"{chosen.op.name}_upto{bound}"
        functions[name] = sch.mod["main"].with_attr("global_symbol", name)
        buckets.append((bound, name))
    return DynamicW4A16Kernel(chosen.op, tuple(buckets), _compile(tvm.IRModule(functions), target))
