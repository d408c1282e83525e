"""python -m benchmarks {matmul,train-step,vs-course,inference,tuner}: how much faster is the GPU, really? How good
is the tuner? What does lower precision cost and save at inference?

    python -m benchmarks matmul                       # CPU (torch and NumPy) vs CUDA if present
    python -m benchmarks matmul --threads 1 --sizes 256,1024 --check-timer 1024
    python -m benchmarks matmul --devices cuda --dtypes float32,tf32,bfloat16,float16 --sizes 256,...,8192
    python -m benchmarks train-step                   # the gptcore GPT's training step, per device
    python -m benchmarks vs-course                    # gptcore against the course's own model and reader
    python -m benchmarks inference --checkpoint results/model --threads 1   # tokens/s, MiB, val loss per precision
    python -m benchmarks tuner replay --seeds 30      # samplers and pruners, replayed on recorded curves
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from benchmarks.flags import add_output_flags, progress_mode
from gptcore.cliutil import Parser, console, int_range, positive_float, positive_int, prog
from gptcore.cliutil import seed as seed_flag
from gptcore.corpus import DEFAULT_CORPUS
from gptcore.errors import UserError

DEFAULT_SIZES = "64,128,256,512,1024,2048,4096"
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "tf32", "bfloat16", "float16")
LIBS = ("torch", "numpy")
THREADS = int_range(1, 1024)  # torch overflows above 2**31 - 1; far past any core count anyway
DEFAULT_DATA = DEFAULT_CORPUS


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


def _dropout(text: str) -> float | None:
    """--dropout: a probability in [0, 1), or 'preset' (None: each preset's own)."""
    if text == "preset":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1) or 'preset', got {text!r}")
    return value


PROG = "python -m benchmarks"


def add_training_flags(p: argparse.ArgumentParser, steps: int, steps_help: str, data_help: str) -> None:
    """--steps, --threads, --data and the output flags of the commands that train the GPT."""
    p.add_argument("--steps", type=positive_int, default=steps, help=f"{steps_help} (default {steps})")
    p.add_argument("--threads", type=THREADS, default=None, help="CPU threads for torch (default: torch's)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help=f"{data_help} (default data/wizard_of_oz.txt)")
    add_output_flags(p)


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """Flags of every subcommand."""
    from benchmarks import matmul as mm  # --sizes' parser and the reference size; imports torch
    from benchmarks import train_step  # the configs --configs names

    p = Parser(prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    m = sub.add_parser("matmul", help="CPU vs GPU matrix multiplication")
    m.add_argument("--sizes", type=_sizes, default=_sizes(DEFAULT_SIZES), help=f"N or MxNxK, comma-separated "
                   f"(default {DEFAULT_SIZES})")
    m.add_argument("--devices", type=_csv(DEVICES, "device"), default=None,
                   help="comma-separated: cpu, cuda, cuda:N (default: cpu, plus cuda if present)")
    m.add_argument("--dtypes", type=_csv(DTYPES, "dtype"), default=None,
                   help="default: float32 on the CPU; float32 and bfloat16 on a GPU (tf32 = float32 on TF32 cores)")
    m.add_argument("--libs", type=_csv(LIBS, "library"), default=["torch", "numpy"],
                   help="CPU libraries, comma-separated (default torch,numpy; a GPU always runs torch)")
    m.add_argument("--threads", type=THREADS, default=None,
                   help="CPU threads for torch and NumPy's BLAS (default: theirs, recorded in matmul.json)")
    m.add_argument("--repeat", type=positive_int, default=5, help="at least this many timed blocks per case "
                   "(default 5)")
    m.add_argument("--min-time", type=positive_float, default=0.5,
                   help="at least this many seconds of timed blocks per case (default 0.5)")
    m.add_argument("--include-transfer", action="store_true",
                   help="also time copies to and from the GPU (pinned host memory) as '+transfer' rows")
    m.add_argument("--cpu-peak-gflops", type=positive_float, default=None,
                   help=f"the CPU peak for share_of_peak, in GFLOP/s (default: the reference measurement, torch at "
                        f"{mm.REFERENCE_SIZE} cubed in each CPU dtype on this run's threads, measured even if not "
                        f"in --sizes)")
    m.add_argument("--check-timer", type=_sizes, default=None, metavar="N",
                   help="also measure torch float32 at this size with torch.utils.benchmark.Timer")
    add_output_flags(m)

    t = sub.add_parser("train-step", help="training throughput of the gptcore GPT")
    t.add_argument("--configs", type=_csv(train_step.CONFIGS, "config"), default=None,
                   help="gptcore presets and/or small-min, small-mid, small-max (points of the tuner's small "
                        "space), comma-separated (default baby, plus course on a GPU)")
    t.add_argument("--devices", type=_csv(DEVICES, "device"), default=None,
                   help="comma-separated: cpu, cuda, cuda:N (default: cpu, plus cuda if present)")
    t.add_argument("--dtypes", type=_csv(("float32", "bfloat16", "float16"), "dtype"), default=None,
                   help="comma-separated (default float32,bfloat16)")
    t.add_argument("--compile", type=_csv(("none", "default", "graphs"), "compile mode"), default=None,
                   help="compile modes side by side, comma-separated: none, default (torch.compile), graphs (CUDA "
                        "graphs, CUDA devices only) (default none on a CPU alone: compiling takes from 30 s to "
                        "minutes per case there; none,default,graphs with a GPU)")
    t.add_argument("--dropout", type=_dropout, default=0.0,
                   help="dropout of every case, or 'preset' for each preset's own (default 0: the step without "
                        "dropout's masks)")
    t.add_argument("--arch", type=_csv(("course", "nanogpt"), "architecture"), default=["course"],
                   help="course (the preset as it is) and/or nanogpt (its shape with pre-norm, GELU, no bias, to "
                        "compare with published nanoGPT figures), comma-separated (default course)")
    add_training_flags(t, 20, "timed training steps per case (after train()'s own untimed warm-up and compile "
                              "steps)", "corpus: a text file or a prepared folder")

    v = sub.add_parser("vs-course", help="gptcore vs the course's model and batch reader (tokens/s, batches/s)")
    v.add_argument("--rounds", type=positive_int, default=12,
                   help="alternating rounds per comparison; ratios are their medians (default 12)")
    add_training_flags(v, 10, "training steps per round",
                       "the plain text corpus both readers read")

    add_inference_parser(sub)
    from benchmarks.tuner_cli import add_tuner_parser

    add_tuner_parser(sub, Parser)
    return p


def add_inference_parser(sub: argparse._SubParsersAction) -> None:
    """The `inference` subcommand's flags."""
    from gptcore.precision import PRECISIONS

    i = sub.add_parser("inference", help="generation tokens/s, weights MiB and validation loss at each precision")
    i.add_argument("--checkpoint", type=Path, required=True, help="checkpoint folder (from python -m gptcore train)")
    i.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="corpus whose validation split is scored: a prepared folder or a .txt file, with the "
                        "checkpoint's vocabulary (default data/wizard_of_oz.txt)")
    i.add_argument("--precisions", type=_csv(PRECISIONS, "precision"), default=list(PRECISIONS),
                   help=f"comma-separated, from {','.join(PRECISIONS)}; float32, the baseline of the loss deltas, "
                        f"is always measured (default: all; int8 needs torchao: pip install 'gptcore-tune[quant]')")
    i.add_argument("--max-new-tokens", type=positive_int, default=200,
                   help="tokens per timed generation (default 200)")
    i.add_argument("--repeat", type=positive_int, default=5,
                   help="timed generations per precision, after one warm-up; tokens/s is their median (default 5)")
    i.add_argument("--eval-batches", type=positive_int, default=20,
                   help="validation batches (the checkpoint's batch and block size) scored at every precision, the "
                        "same batches for all (default 20)")
    i.add_argument("--seed", type=seed_flag, default=1337,
                   help="seed of the validation batches and of sampling during generation (default 1337)")
    i.add_argument("--threads", type=THREADS, default=None,
                   help="CPU threads for torch, fixed for the whole run (default: torch's; recorded)")
    i.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (default cpu)")
    add_output_flags(i)


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


def no_gpu_line(command: str, devices: list[str]) -> str | None:
    """What to say when a run measures no GPU (None when it measures one): why, and what to run on a GPU."""
    if any(d != "cpu" for d in devices):
        return None
    import torch

    why = "CPU only (--devices cpu)" if torch.cuda.is_available() else "no CUDA GPU found: CPU only"
    return f"{why}. On a GPU machine run: {PROG} {command} --devices cpu,cuda"


def check_devices(devices: list[str]) -> None:
    """A CUDA device asked for must exist."""
    import torch

    for d in devices:
        if d.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"--devices {d}: CUDA is not available on this machine")


def matmul_cases(args: argparse.Namespace, devices: list[str]) -> list:
    """Every device x dtype x library x size asked for (NumPy: float32 only)."""
    from benchmarks import matmul as mm

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
    return cases


def cmd_matmul(args: argparse.Namespace) -> int:
    """Run the sweep (plus the CPU peak's reference case), print the table and notes, write csv/json/png."""
    from dataclasses import asdict

    import torch

    from benchmarks import matmul as mm
    from benchmarks.report import print_table, write_matmul

    settings = mm.Settings(args.min_time, args.repeat, args.cpu_peak_gflops)
    set_threads(args.threads)
    devices = args.devices or default_devices()
    check_devices(devices)
    cases = matmul_cases(args, devices)
    cpu_dtypes = list(dict.fromkeys(c.dtype for c in cases if c.device == "cpu"))
    # The CPU peak's reference case runs with the others (same settings, same bar) unless --sizes has it.
    extra = [] if settings.cpu_peak_gflops is not None else [
        c for c in mm.reference_cases(cpu_dtypes) if c not in cases]
    check_at = args.check_timer[0] if args.check_timer else None
    measured = mm.run(cases + extra, settings, progress=progress_mode(args), check_timer_at=check_at)
    cpu_peak = mm.cpu_peaks(measured, cpu_dtypes, settings.cpu_peak_gflops, torch.get_num_threads())
    df = measured.iloc[:len(cases)]  # the reference case is a note, not a row of the sweep
    env = mm.environment(devices)
    df = mm.add_comparisons(df, cpu_peak, env.get("device_name"))
    cross = {**mm.crossover(df, transfer=False), **(mm.crossover(df, transfer=True) if args.include_transfer else {})}
    print_table(df, notes=not args.quiet)
    missing = no_gpu_line("matmul", devices)
    if not args.quiet:
        for series, size in cross.items():
            print(f"crossover {series}: " + (f"the GPU is faster from size {size} on" if size else
                                             "the GPU never beats the CPU at these sizes"))
        if missing:
            print(missing)
        elif mm.no_cpu_note(df):
            print(mm.no_cpu_note(df)["note"])
    note = mm.no_gpu_note(torch.cuda.is_available()) if missing else mm.no_cpu_note(df)
    paths = write_matmul(df, env, cross, args.out, note, {k: asdict(v) for k, v in cpu_peak.items()})
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def cmd_train_step(args: argparse.Namespace) -> int:
    """Time the gptcore training step per preset, device and dtype."""
    import torch

    from benchmarks import train_step
    from benchmarks.report import contention_lines, readable
    from gptcore import hardware as hw
    from gptcore.data import TokenData

    set_threads(args.threads)
    devices = args.devices or default_devices()
    check_devices(devices)
    dtypes = {d: args.dtypes or ["float32", "bfloat16"] for d in devices}
    gpu = any(d != "cpu" for d in devices)
    # Defaults that finish in a few minutes on a 2-core CPU; a GPU gets the full comparison.
    modes = args.compile or (["none", "default", "graphs"] if gpu else ["none"])
    configs = args.configs or (["baby", "course"] if gpu else ["baby"])
    data = TokenData.open(args.data)
    df = train_step.run(configs, devices, dtypes, data, steps=args.steps, progress=progress_mode(args),
                        compile_modes=modes, archs=args.arch, dropout=args.dropout)
    print(readable(df))
    if not args.quiet:
        for warning in contention_lines(df):
            print(warning)
    missing = no_gpu_line("train-step", devices)
    if missing and not args.quiet:
        print(missing)
    env = hw.environment(torch.device(devices[-1]))
    print("wrote " + ", ".join(str(p) for p in train_step.write(df, env, args.out)))
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
                       rounds=args.rounds, progress=progress_mode(args))
    import torch

    if not args.quiet:
        print(f"baby config, CPU, {torch.get_num_threads()} threads; medians over {args.rounds} alternating rounds")
    print(df.round(3).to_string(index=False))
    print("wrote " + str(write_frame(df, args.out / "vs_course.csv")))
    return 0


def cmd_inference(args: argparse.Namespace) -> int:
    """Every precision side by side: print the Markdown table, write inference.json and inference.csv."""
    import json
    from dataclasses import asdict

    from benchmarks import inference
    from benchmarks.report import write_frame
    from gptcore.checkpoint import load_checkpoint
    from gptcore.data import TokenData
    from gptcore.files import atomic_write_text
    from gptcore.hardware import resolve_device

    set_threads(args.threads)
    device = resolve_device(args.device)
    ckpt = load_checkpoint(args.checkpoint, with_optimizer=False, user_models=False)  # gptcore's GPT only
    data = TokenData.open(args.data)
    settings = inference.Settings(max_new_tokens=args.max_new_tokens, repeat=args.repeat,
                                  eval_batches=args.eval_batches, seed=args.seed)
    df = inference.run(ckpt, data, args.precisions, settings, device, progress=progress_mode(args))
    if not args.quiet:
        import torch

        print(f"{args.checkpoint} ({ckpt.model_cfg.n_layer} layers, {ckpt.model_cfg.n_embed} wide) on {device}, "
              f"{torch.get_num_threads()} thread(s); tokens/s: median of {args.repeat} generations of "
              f"{args.max_new_tokens} tokens; val loss over {args.eval_batches} batches of {args.data}")
    print(inference.markdown(df))
    doc = {"environment": inference.environment(device), "settings": asdict(settings),
           "checkpoint": str(args.checkpoint), "data": str(args.data),
           "results": json.loads(df.to_json(orient="records", double_precision=15))}
    paths = [write_frame(df, args.out / "inference.csv"),
             atomic_write_text(args.out / "inference.json", json.dumps(doc, indent=1, default=str) + "\n")]
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    from benchmarks.report import check_out_dir

    args = build_parser(prog(PROG)).parse_args(argv)
    check_out_dir(args.out)  # every subcommand writes there: refuse a bad --out before any work
    from benchmarks.tuner_cli import cmd_tuner

    commands = {"matmul": cmd_matmul, "train-step": cmd_train_step, "vs-course": cmd_vs_course,
                "inference": cmd_inference, "tuner": cmd_tuner}
    return commands[args.command](args)


def cli() -> None:
    """The console command gptcore-bench: main() with its name in usage and errors, as `python -m benchmarks` runs."""
    console(main, PROG)


if __name__ == "__main__":
    cli()
