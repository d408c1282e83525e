"""python -m benchmarks {matmul,train-step,vs-course,tuner}: how much faster is the GPU, really? How good is the tuner?

    python -m benchmarks matmul                       # CPU (torch and NumPy) vs CUDA if present
    python -m benchmarks matmul --threads 1 --sizes 256,1024 --check-timer 1024
    python -m benchmarks matmul --devices cuda --dtypes float32,tf32,bfloat16,float16 --sizes 256,...,8192
    python -m benchmarks train-step                   # the gptcore GPT's training step, per device
    python -m benchmarks vs-course                    # gptcore against the course's own model and reader
    python -m benchmarks tuner replay --seeds 30      # samplers and pruners, replayed on recorded curves
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gptcore.cliutil import Parser, int_range, positive_float, positive_int, run
from gptcore.errors import UserError

DEFAULT_SIZES = "64,128,256,512,1024,2048,4096"
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "tf32", "bfloat16", "float16")
LIBS = ("torch", "numpy")
THREADS = int_range(1, 1024)  # torch overflows above 2**31 - 1; far past any core count anyway
DEFAULT_DATA = Path(__file__).resolve().parent.parent / "data" / "wizard_of_oz.txt"


def _csv(choices: tuple[str, ...], what: str):
    def parse(text: str) -> list[str]:
        items = [x.strip() for x in text.split(",") if x.strip()]
        bad = [x for x in items if x not in choices and not (what == "device" and x[:5] == "cuda:" and x[5:].isdigit())]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or repr(text)}; "
                                             f"choose from {', '.join(choices)}")
        return items

    parse.__name__ = f"{what} list"
    return parse


def _sizes(text: str):
    from benchmarks.matmul import parse_sizes

    try:
        return parse_sizes(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    """Flags of every subcommand."""
    p = Parser(prog="python -m benchmarks", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    m = sub.add_parser("matmul", help="CPU vs GPU matrix multiplication")
    m.add_argument("--sizes", type=_sizes, default=_sizes(DEFAULT_SIZES), help=f"N or MxNxK, comma-separated "
                   f"(default {DEFAULT_SIZES})")
    m.add_argument("--devices", type=_csv(DEVICES, "device"), default=None, help="default: cpu, plus cuda if present")
    m.add_argument("--dtypes", type=_csv(DTYPES, "dtype"), default=None,
                   help="default: float32 on the CPU; float32 and bfloat16 on a GPU (tf32 = float32 on TF32 cores)")
    m.add_argument("--libs", type=_csv(LIBS, "library"), default=["torch", "numpy"], help="CPU libraries")
    m.add_argument("--threads", type=THREADS, default=None, help="CPU threads for torch and NumPy's BLAS")
    m.add_argument("--repeat", type=positive_int, default=5, help="at least this many timed blocks per case")
    m.add_argument("--min-time", type=positive_float, default=0.5, help="at least this many seconds of timed blocks")
    m.add_argument("--include-transfer", action="store_true", help="also time copies to and from the GPU")
    m.add_argument("--cpu-peak-gflops", type=positive_float, default=None,
                   help="CPU peak (default: best measured here)")
    m.add_argument("--check-timer", type=_sizes, default=None, metavar="N",
                   help="also measure torch float32 at this size with torch.utils.benchmark.Timer")
    m.add_argument("--out", type=Path, default=Path("results/bench"))
    m.add_argument("--no-progress", action="store_true")

    t = sub.add_parser("train-step", help="training throughput of the gptcore GPT")
    t.add_argument("--configs", type=_csv(("tiny", "baby", "course-default", "course", "gpu"), "preset"),
                   default=["baby", "course"])
    t.add_argument("--devices", type=_csv(DEVICES, "device"), default=None)
    t.add_argument("--dtypes", type=_csv(("float32", "bfloat16", "float16"), "dtype"), default=None,
                   help="default: float32 and bfloat16")
    t.add_argument("--steps", type=positive_int, default=20)
    t.add_argument("--threads", type=THREADS, default=None)
    t.add_argument("--data", type=Path, default=DEFAULT_DATA)
    t.add_argument("--out", type=Path, default=Path("results/bench"))
    t.add_argument("--no-progress", action="store_true")

    v = sub.add_parser("vs-course", help="gptcore vs the course's model and batch reader (tokens/s, batches/s)")
    v.add_argument("--rounds", type=positive_int, default=12)
    v.add_argument("--steps", type=positive_int, default=10, help="training steps per round")
    v.add_argument("--threads", type=THREADS, default=None)
    v.add_argument("--data", type=Path, default=DEFAULT_DATA)
    v.add_argument("--out", type=Path, default=Path("results/bench"))
    v.add_argument("--no-progress", action="store_true")

    from benchmarks.tuner_cli import add_tuner_parser

    add_tuner_parser(sub, Parser)
    return p


def set_threads(n: int | None) -> None:
    """Fix torch's and NumPy's BLAS thread counts (always recorded in the results)."""
    if n is None:
        return
    import torch

    torch.set_num_threads(n)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=n, user_api="blas")
    except ImportError:
        pass  # NumPy keeps its own count; environment() records it either way


def default_devices() -> list[str]:
    """cpu, plus cuda when present."""
    import torch

    return ["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"]


def check_devices(devices: list[str]) -> None:
    """A CUDA device asked for must exist."""
    import torch

    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--devices {d}: CUDA is not available on this machine")


def cmd_matmul(args: argparse.Namespace) -> int:
    """Run the sweep, print the table and the crossover, write csv/json/png."""
    from benchmarks import matmul as mm
    from benchmarks.report import print_table, write_matmul

    settings = mm.Settings(args.min_time, args.repeat, args.cpu_peak_gflops)
    set_threads(args.threads)
    devices = args.devices or default_devices()
    check_devices(devices)
    cases = []
    for dev in devices:
        dtypes = args.dtypes or (["float32"] if dev == "cpu" else ["float32", "bfloat16"])
        for dtype in dtypes:
            if dev == "cpu" and dtype in ("tf32", "float16"):
                raise UserError(f"--dtypes {dtype}: GPU only (the CPU has no {dtype} matmul worth timing)")
            libs = args.libs if dev == "cpu" else ["torch"]
            for lib in libs:
                if lib == "numpy" and dtype != "float32":
                    continue  # NumPy has no bfloat16; its float16 matmul is emulated
                for size in args.sizes:
                    cases.append(mm.Case(dev, dtype, lib, size))
                    if args.include_transfer and dev != "cpu":
                        cases.append(mm.Case(dev, dtype, lib, size, transfer=True))
    check_at = args.check_timer[0] if args.check_timer else None
    df = mm.run(cases, settings, progress=not args.no_progress, check_timer_at=check_at)
    env = mm.environment(devices)
    df = mm.add_comparisons(df, settings.cpu_peak_gflops, env.get("device_name"))
    cross = {**mm.crossover(df, transfer=False), **(mm.crossover(df, transfer=True) if args.include_transfer else {})}
    print_table(df)
    for series, size in cross.items():
        print(f"crossover {series}: " + (f"the GPU is faster from size {size} on" if size else
                                         "the GPU never beats the CPU at these sizes"))
    paths = write_matmul(df, env, cross, args.out)
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_train_step(args: argparse.Namespace) -> int:
    """Time the gptcore training step per preset, device and dtype."""
    from benchmarks import train_step
    from benchmarks.report import write_frame
    from gptcore.data import TokenData

    set_threads(args.threads)
    devices = args.devices or default_devices()
    check_devices(devices)
    dtypes = {d: args.dtypes or ["float32", "bfloat16"] for d in devices}
    data = TokenData.open(args.data)
    df = train_step.run(args.configs, devices, dtypes, data, steps=args.steps, progress=not args.no_progress)
    print(df.round(3).to_string(index=False))
    print("wrote " + str(write_frame(df, args.out / "train_step.csv")))
    return 0


def cmd_vs_course(args: argparse.Namespace) -> int:
    """gptcore vs the course's implementation, in one run."""
    from benchmarks import vs_course
    from benchmarks.report import write_frame
    from gptcore.config import from_name
    from gptcore.data import TokenData

    set_threads(args.threads)
    data = TokenData.open(args.data)
    m, t = from_name("baby")
    df = vs_course.run(data, str(args.data), m.with_vocab(data.vocab_size), t.batch_size, steps=args.steps,
                       rounds=args.rounds, progress=not args.no_progress)
    import torch

    print(f"baby config, CPU, {torch.get_num_threads()} threads; medians over {args.rounds} alternating rounds")
    print(df.round(3).to_string(index=False))
    print("wrote " + str(write_frame(df, args.out / "vs_course.csv")))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    from benchmarks.report import check_out_dir

    args = build_parser().parse_args(argv)
    check_out_dir(args.out)  # every subcommand writes there: refuse a bad --out before any work
    from benchmarks.tuner_cli import cmd_tuner

    commands = {"matmul": cmd_matmul, "train-step": cmd_train_step, "vs-course": cmd_vs_course, "tuner": cmd_tuner}
    return commands[args.command](args)


if __name__ == "__main__":
    run(main, prog="python -m benchmarks")
