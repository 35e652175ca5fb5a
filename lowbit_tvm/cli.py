"""``lowbit-tvm``: the command-line entry (demo, tune, bench)."""
import argparse
import sys
from pathlib import Path

from .errors import LowbitError

LARGE_SHAPES = "4096x22016 11008x4096 8192x57344 28672x8192"


def _shape(text: str):
    try:
        k, n = (int(v) for v in text.lower().split("x"))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"shape must look like KxN (e.g. 4096x11008), got {text!r}") from exc
    if k <= 0 or n <= 0:
        raise argparse.ArgumentTypeError(f"shape sizes must be positive, got {text!r}")
    return k, n


def _add_demo(sub):
    p = sub.add_parser("demo", help="quantize a built-in matrix, build the W4A16 kernel, check it (and time it on a GPU)")
    p.add_argument("-o", "--output", type=Path, default=Path("build/w4a16_demo.so"), help="library file to write")
    p.add_argument("--arch", default=None, help="CUDA arch to build for (default: the local GPU's, else sm_90)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")


def _add_tune(sub):
    p = sub.add_parser(
        "tune",
        help="tune W4A16 kernels for the local GPU into tuning_logs/<arch>/",
        description="Tune each (K, N, M) workload with MetaSchedule on the local GPU and add its best record "
        "to the database tuning_logs/<arch>/ (existing records are kept; the best one wins at build time).",
    )
    p.add_argument("--shapes", type=_shape, nargs="+", default=[_shape(s) for s in LARGE_SHAPES.split()],
                   help=f"weight shapes KxN (default: {LARGE_SHAPES})")
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64], help="values of M (default 1 16 64)")
    p.add_argument("--scheme", default="w4a16-g128", help="quantization scheme (default w4a16-g128)")
    p.add_argument("--trials", type=int, default=32, help="measured candidates per workload (default 32)")
    p.add_argument("--out", type=Path, default=None, help="tuning_logs root (default: the package's tuning_logs/)")


def _add_bench(sub):
    p = sub.add_parser("bench", help="benchmark W4A16 vs cuBLAS fp16 and tinygemm on the GPU (JSON + PNG)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="results folder")
    p.add_argument("--scheme", default="w4a16-g128", help="quantization scheme (default w4a16-g128)")
    p.add_argument("--batches", type=int, nargs="+", default=None, help="values of M (default 1 16 32 64 128 256)")
    p.add_argument("--no-tuned", action="store_true", help="ignore the tuning database (default configs only)")
    p.add_argument("--shapes", type=_shape, nargs="+", default=None,
                   help="weight shapes KxN (default: the six Llama shapes of the README table)")


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``lowbit-tvm``."""
    top = argparse.ArgumentParser(
        prog="lowbit-tvm",
        description="Low-bit LLM kernels (W4A16 group-quantized GEMM/GEMV) as TVM TensorIR with our own "
        "tensor-core schedules: build, tune and benchmark them.",
    )
    sub = top.add_subparsers(dest="command", required=True)
    _add_demo(sub)
    _add_tune(sub)
    _add_bench(sub)
    return top


def _tune(args):
    from .codegen import detect_cuda_arch  # pylint: disable=import-outside-toplevel
    from .kernel import default_target  # pylint: disable=import-outside-toplevel
    from .ops.w4a16 import W4A16Op  # pylint: disable=import-outside-toplevel
    from .quant import get_scheme  # pylint: disable=import-outside-toplevel
    from .tuning import database_dir, tune_op  # pylint: disable=import-outside-toplevel
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel

    arch = detect_cuda_arch()
    if arch is None:
        raise LowbitError("lowbit-tvm tune times candidates on the GPU it tunes for, and no CUDA GPU was found")
    scheme = get_scheme(args.scheme)
    out = database_dir(arch, args.out)
    ops = [W4A16Op(n, k, scheme, m) for k, n in args.shapes for m in args.batches]
    for op in tqdm(ops, desc="tuning", unit="workload"):
        best = tune_op(op, default_target(arch), out, trials=args.trials)
        tqdm.write(f"{op.name}: best {best:.1f} us" if best else f"{op.name}: no valid candidate")
    print(f"database: {out}")


def main(argv=None) -> int:
    """Run ``lowbit-tvm``; user errors print one clear line and exit with status 2."""
    args = parser().parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo  # pylint: disable=import-outside-toplevel

            run_demo(args.output, args.arch, args.overwrite)
        elif args.command == "tune":
            _tune(args)
        else:
            from .bench import run_bench  # pylint: disable=import-outside-toplevel

            run_bench(args.out, args.scheme, args.batches, not args.no_tuned, args.shapes)
    except LowbitError as exc:
        print(f"lowbit-tvm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
