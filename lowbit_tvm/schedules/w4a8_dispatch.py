"""Which kernels and default configs serve an Atom-style linear layer (W4A8 / W8A8) at a batch size.

A layer is the quantize kernel plus one GEMM (no outliers) or two: the main part (int4 group weights, or
int8 per channel) and the outlier part (int8 x int8 over ``outliers`` channels, added onto the first's
result). Variants: W4A8 and W8A8 on any sm_80+ target; W4A4 (int4 activations per token and group of 128,
``mma.m16n8k64.s4``: ``lowbit_tvm.ops.w4a4``) only where int4 tensor cores are native (sm_80/86/89): on sm_90
(int4 mma emulated there, about 50 TOPS against 1289 for int8) asking for it raises and says to use W4A8.
"""
from dataclasses import asdict, dataclass

from ..errors import CodegenError, QuantizationError
from ..ops.w4a4 import Int4GemmOp
from ..ops.w4a8 import ActQuantOp, IntGemmOp
from ..quant import atom_w4a4
from ..quant.atom import AtomScheme
from .w4a4_tensor_core import Int4GemmConfig, Int4GemmTensorCore
from .w4a8_quantize import ActQuantConfig
from .w4a8_tensor_core import IntGemmConfig

INT4_MMA_ARCHS = ("sm_80", "sm_86", "sm_89")
# Up to this many rows the W4A16 kernel (fp16 activations, weights decoded to fp16) serves the layer: on the H100
# (first device run, benchmarks/results/nvidia_h100_80gb_hbm3/w4a8.json) our W4A8 GEMM alone was slower than
# W4A16 at M=16 on 3 of the 4 Llama shapes (e.g. 11008x4096: 46 vs 26 us), before counting the quantize kernel.
W4A16_UP_TO_M = 16
VARIANTS = ("w4a8", "w8a8", "w4a4")

# Per batch size (rows up to the key): (warps_m, tile_m, warps_n, tile_n). Block tile 16*wm*tm x 16*wn*tn.
# Above 64 rows from the H100 sweep of the W4A8 GEMM (second device run, "sweep" in w4a8.json; 7 configs at
# M = 128/1024/4096 on 4096x22016 and 8192x57344): 64x128 blocks won at M=128 (72.9 vs 86.7 us for the 128x128
# ones run 2's benchmark used; 278.7 vs 317.2 us), 64x128 with 4 warps at M >= 1024 on 3 of 4 workloads
# (e.g. 1475 vs 1619 us at 4096x22016, M=4096).
_TILES = ((16, (1, 1, 4, 1)), (32, (1, 2, 4, 1)), (64, (2, 2, 4, 1)), (256, (2, 2, 4, 2)), (None, (1, 4, 4, 2)))


def check_variant(variant: str, arch: str) -> str:
    """The variant that serves ``variant`` on ``arch``, or a clear error.

    Raises
    ------
    CodegenError
        For ``"w4a4"`` on other archs than sm_80/86/89 (sm_90 and newer emulate int4 mma: use ``"w4a8"``) and
        for unknown variants.
    """
    if variant not in VARIANTS:
        raise CodegenError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    if variant == "w4a4" and arch.replace("a", "") not in INT4_MMA_ARCHS:
        raise CodegenError(
            f"W4A4 needs native int4 tensor cores (sm_80/86/89); {arch} emulates int4 mma (about 50 TOPS vs "
            "1289 for int8 on the H100): use variant 'w4a8' (int4 weights unpacked to int8 in registers)"
        )
    return variant


def choose_path(m: int) -> str:
    """``"w4a16"`` for batches up to ``W4A16_UP_TO_M`` rows (weight-bound: int8 activations buy nothing there),
    else ``"w4a8"``."""
    return "w4a16" if m <= W4A16_UP_TO_M else "w4a8"


def gemm_config(m: int, n: int) -> IntGemmConfig:
    """The default config at ``m`` rows: tiles follow the batch size; N tiles shrink until they divide N."""
    warps_m, tile_m, warps_n, tile_n = next(t for bound, t in _TILES if bound is None or m <= bound)
    while (n // 16) % (warps_n * tile_n) and tile_n > 1:
        tile_n //= 2
    while (n // 16) % (warps_n * tile_n) and warps_n > 1:
        warps_n //= 2
    return IntGemmConfig(warps_m, warps_n, tile_m, tile_n, 4, 2)


def block_rows(config: IntGemmConfig) -> int:
    """Rows of one block tile: the M padding unit."""
    return 16 * config.warps_m * config.tile_m


@dataclass(frozen=True)
class LinearPlan:
    """The kernels of one layer at one batch size: quantize op + config, GEMM ops + configs."""

    scheme: AtomScheme
    m: int
    n: int
    k: int
    quant: ActQuantOp
    quant_config: ActQuantConfig
    gemms: tuple  # ((IntGemmOp or Int4GemmOp, its config), ...)

    @property
    def m_pad(self) -> int:
        return self.quant.m_pad

    @property
    def variant(self) -> str:
        """``"w4a4"``, ``"w4a8"`` or ``"w8a8"``."""
        if self.quant.bits == 4:
            return "w4a4"
        return "w4a8" if self.scheme.weight_bits == 4 else "w8a8"


def _main_gemm(m_pad: int, n: int, main_k: int, scheme: AtomScheme, act_bits: int, config) -> tuple:
    """(op, config) of the main part."""
    if act_bits == 4:
        atom_w4a4.check_scheme(scheme)
        if not isinstance(config, Int4GemmConfig):  # e.g. the W4A8 defaults: at most 2 steps of 32 bytes here
            config = Int4GemmConfig(**{**asdict(config), "k_inner": min(config.k_inner, Int4GemmConfig.k_inner)})
        if config.k_inner not in Int4GemmTensorCore.SPACE["k_inner"]:
            raise QuantizationError(f"W4A4 k_inner must be 1 or 2 (a group is 64 bytes), got {config.k_inner}")
        return Int4GemmOp(n, main_k, atom_w4a4.GROUP, m_pad), config
    if act_bits != 8:
        raise QuantizationError(f"activation bits must be 8 (W4A8/W8A8) or 4 (W4A4), got {act_bits}")
    return IntGemmOp(n, main_k, scheme.weight_bits, scheme.group_size or main_k, m_pad), config


def plan_linear(m: int, n: int, k: int, scheme: AtomScheme, config: IntGemmConfig | None = None,
                act_bits: int = 8) -> LinearPlan:
    """Plan the kernels of a ``[N, K]`` layer under ``scheme`` for ``m`` rows.

    ``act_bits=4`` plans W4A4 (int4 main activations; ``scheme`` must be int4 weights in groups of 128); this
    does not check the target (``check_variant`` does).

    Raises
    ------
    QuantizationError
        If N is not a multiple of 16, the outlier count does not fit K, or W4A4 gets another scheme.
    """
    if n % 16:
        raise QuantizationError(f"the int8 tensor-core kernels need N % 16 == 0, got N={n}; pad the weight rows")
    main_k = scheme.main_k(k)
    config = config or gemm_config(m, n)
    m_pad = -(-m // block_rows(config)) * block_rows(config)
    quant = ActQuantOp(k, main_k, scheme.outliers, m, m_pad, act_bits)
    main, config = _main_gemm(m_pad, n, main_k, scheme, act_bits, config)
    gemms = [(main, config)]
    if scheme.outliers:
        k_inner = next(i for i in (4, 2, 1) if (scheme.outliers // 32) % i == 0)
        out_config = IntGemmConfig(config.warps_m, config.warps_n, config.tile_m, config.tile_n, k_inner, config.prefetch)
        out = IntGemmOp(n, scheme.outliers, 8, scheme.outliers, m_pad, True)
        gemms.append((out, out_config))
    return LinearPlan(scheme, m, n, k, quant, act_quant_config(m_pad), tuple(gemms))


# Threads per token row of the quantize kernel (one block per row, vec 4): 1024 up to ACT_QUANT_WIDE_ROWS rows
# (each thread then gathers a quarter of what 256 threads did: at K=28672 65.0 -> 28.2 us for 128 rows, H100,
# benchmarks/results/nvidia_h100_80gb_hbm3/act_quant.json), 512 above (more rows than one wave of 1024-thread
# blocks: 512 was the fastest at 1024 and 4096 rows on every K measured).
ACT_QUANT_WIDE_ROWS = 512


def act_quant_config(rows: int) -> ActQuantConfig:
    """The quantize kernel's config for ``rows`` (padded) token rows."""
    return ActQuantConfig(threads=1024 if rows <= ACT_QUANT_WIDE_ROWS else 512, vec=4)
