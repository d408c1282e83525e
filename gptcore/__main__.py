"""python -m gptcore {prepare,train,finetune,sample,chat}: the course's scripts as one command (`gptcore`)."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from gptcore.cliutil import PROGRESS_HELP, Parser, add_config_flags, add_quiet, config_overrides, console, prog
from gptcore.config import ModelConfig, TrainConfig
from gptcore.corpus import DEFAULT_CORPUS
from gptcore.errors import UserError

DEFAULT_DATA = DEFAULT_CORPUS
DEFAULT_OUT = Path("results") / "model"
PROG = "python -m gptcore"


def build_parser() -> argparse.ArgumentParser:
    """The argument parser for every subcommand."""
    from gptcore import cliutil as flag
    from gptcore.config import PRESETS
    from gptcore.precision import PRECISIONS

    parser = Parser(prog=prog(PROG), description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser,
                                help="what to do (each has --help for its flags)")

    p = sub.add_parser("prepare", help="text or a folder of .txt/.xz shards -> train.bin, val.bin, meta.json")
    p.add_argument("src", type=Path, help="a .txt/.xz file, or a folder of them (OpenWebText layout)")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: a new one, or one prepared before (replaced)")
    p.add_argument("--val-fraction", type=flag.fraction, default=0.1,
                   help="share of the files (of the text, for one file) held out for validation (default 0.1)")
    p.add_argument("--workers", type=flag.positive_int, default=min(4, os.cpu_count() or 1),
                   help="processes encoding files in parallel (default: the CPU count, at most 4)")
    p.add_argument("--skip-bad", action="store_true", help="skip corrupt .xz files instead of failing")
    p.add_argument("--tokenizer", choices=["char", "bpe"], default="char",
                   help="char: one id per distinct character; bpe: a byte-level BPE trained on the train split, "
                        "saved as tokenizer.json beside meta.json (default char)")
    p.add_argument("--vocab-size", type=flag.positive_int, default=None,
                   help="--tokenizer bpe only: vocabulary size to train, at least 257 (256 bytes + <|endoftext|>) "
                        "(default 2048)")
    p.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    add_quiet(p)

    t = sub.add_parser("train", help="train a GPT and save a checkpoint")
    t.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="corpus: a prepared folder or a .txt file (default: the shipped wizard_of_oz.txt)")
    t.add_argument("--preset", choices=list(PRESETS), default="baby",
                   help="named starting configuration, which --config and the field flags override (default baby)")
    t.add_argument("--config", type=Path, help="JSON config (e.g. the tuner's best.json); flags override it")
    t.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"checkpoint folder (default {DEFAULT_OUT})")
    t.add_argument("--resume", action="store_true",
                   help="continue from the checkpoint in --out (its model; training flags may change)")
    t.add_argument("--model", type=model_flag, default="gpt", metavar="{gpt,bigram,FILE.py:Class,pkg.mod:Class}",
                   help="gpt: the transformer; bigram: the course's one-table baseline; or your own model class "
                        "(docs/your-model.md), which a --config or --resume naming one needs (default gpt)")
    t.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    add_quiet(t)
    add_config_flags(t)

    f = sub.add_parser("finetune", help="fine-tune a checkpoint on prompt/completion pairs (JSONL)")
    f.add_argument("--checkpoint", type=Path, required=True, help="the checkpoint folder to start from")
    f.add_argument("--data", type=Path, required=True,
                   help='JSONL file, one {"prompt": ..., "completion": ...} object per line')
    f.add_argument("--out", type=Path, required=True,
                   help="folder for the fine-tuned checkpoint: a new one, or a checkpoint (replaced)")
    f.add_argument("--val-fraction", type=flag.fraction, default=0.1,
                   help="share of the pairs held out for validation, drawn by --seed (default 0.1)")
    f.add_argument("--extend-vocab", action="store_true",
                   help="add characters of the pairs missing from the checkpoint's vocabulary (default: refuse them)")
    f.add_argument("--max-new-tokens", type=flag.positive_int, default=100,
                   help="after tuning, greedy answers to the held-out prompts are generated up to this many tokens "
                        "and the share that stops at EOS is reported (default 100)")
    add_quiet(f)
    add_config_flags(f)

    for name in ("sample", "chat"):
        s = sub.add_parser(name, help="generate text from a checkpoint" if name == "sample" else "talk to a model")
        s.add_argument("--checkpoint", type=Path, default=DEFAULT_OUT,
                       help=f"checkpoint folder (default {DEFAULT_OUT})")
        if name == "sample":
            s.add_argument("--prompt", default="", help="text to continue (default: none, start from a newline)")
        tokens = 500 if name == "sample" else 200
        # A bound: the generated ids stay in memory and each token costs a forward pass; a million is hours.
        s.add_argument("--max-new-tokens", type=flag.int_range(0, 10**6), default=tokens,
                       help=f"characters to generate{' per reply' if name == 'chat' else ''} (default {tokens})")
        s.add_argument("--temperature", type=flag.non_negative_float, default=1.0,
                       help="softmax temperature: below 1 safer, above 1 wilder, 0 greedy (default 1.0)")
        s.add_argument("--top-k", type=flag.positive_int, default=None,
                       help="sample from the k likeliest characters only (default: from all)")
        s.add_argument("--seed", type=flag.seed, default=None,
                       help="random seed: the same seed, the same text (default: a random one)")
        s.add_argument("--device", default="auto",
                       help="auto (cuda if present, else mps, else cpu), cpu, cuda, cuda:N or mps (default auto)")
        s.add_argument("--precision", choices=PRECISIONS, default="float32",
                       help="weights for generation: float32, bfloat16 or float16 (cast), or int8 (Linear layers "
                            "quantised weight-only with torchao: pip install 'gptcore-tune[quant]') (default "
                            "float32)")
        s.add_argument("--model", type=model_flag, default=None, metavar="FILE.py:Class",
                       help="the checkpoint's model class, when it is your own (FILE.py:Class or package.module:Class):"
                            " its code runs only when named")
        s.add_argument("--drop-unknown", action="store_true",
                       help="drop characters of the prompt (or of what you type) not in the vocabulary (default: "
                            "refuse them)")
    return parser


def model_flag(text: str) -> str:
    """A flag type for --model: gpt, bigram, or a model class spec FILE.py:Class / package.module:Class."""
    from gptcore.config import split_model_spec

    if text in ("gpt", "bigram"):
        return text
    try:
        split_model_spec(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected gpt, bigram, FILE.py:Class or package.module:Class, got "
                                         f"{text!r}") from None
    return text


def user_model(args: argparse.Namespace) -> str:
    """The model class spec --model names ("" for gpt, bigram or none)."""
    return args.model if args.model not in (None, "gpt", "bigram") else ""


def cmd_prepare(args: argparse.Namespace) -> int:
    """Run corpus preparation and print its summary line."""
    from gptcore.prepare import prepare

    summary = prepare(args.src, args.out, val_fraction=args.val_fraction, workers=args.workers,
                      skip_bad=args.skip_bad, progress=not (args.no_progress or args.quiet),
                      tokenizer=args.tokenizer, vocab_size=args.vocab_size)
    print(summary.line())  # the result: printed with --quiet too
    return 0


def resolve_configs(args: argparse.Namespace, vocab_size: int,
                    resume_cfg: tuple[ModelConfig, TrainConfig] | None = None) -> tuple[ModelConfig, TrainConfig]:
    """Preset (or checkpoint) < --config file < flags, with the corpus's vocabulary size filled in."""
    from gptcore import config as C

    values: dict = {}
    if resume_cfg is not None:
        saved = C.to_dict(*resume_cfg)
        values.update({**saved["model"], **saved["train"]})
    else:
        values.update(C.PRESETS[args.preset])
    try:
        if args.config is not None:
            values.update(C.load_json(args.config))
        values.update(config_overrides(args))
        model_cfg, train_cfg = C.from_dict(values)
    except (TypeError, ValueError) as exc:
        raise UserError(str(exc)) from None
    if model_cfg.vocab_size not in (0, vocab_size):
        raise UserError(f"config vocab_size {model_cfg.vocab_size} does not match the corpus ({vocab_size})")
    return model_cfg.with_vocab(vocab_size), train_cfg


def check_model_fits(model_cfg: ModelConfig, train_cfg: TrainConfig, args: argparse.Namespace) -> None:
    """Refuse, before allocating anything, a model whose training cannot fit the device (gptcore.memory)."""
    import torch

    from gptcore.hardware import resolve_device
    from gptcore.memory import check_fits

    device = resolve_device(train_cfg.device)
    total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else None
    where = (str(Path(args.out) / "config.json") if args.resume
             else f"--config {args.config}" if args.config is not None else "the model flags")
    check_fits(model_cfg, where, training=True, device=str(device), device_bytes=total)


@contextlib.contextmanager
def ctrl_c_stops(event: threading.Event) -> Iterator[None]:
    """While active, the first Ctrl-C (or SIGTERM: cliutil routes it here) sets `event` (training stops at the next
    step); a second one aborts."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return

    def handler(signum: int, frame: object) -> None:
        if event.is_set():
            raise KeyboardInterrupt
        event.set()
        what = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        print(f"{prog(PROG)} train: {what}: stopping after this step to save the checkpoint "
              f"({what} again to quit without saving)", file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclasses.dataclass
class _TrainRun:
    """What `train` trains, once its flags, checkpoint and corpus are checked: configs, data, the model to go on."""

    model_cfg: ModelConfig
    train_cfg: TrainConfig
    data: Any  # gptcore.data.TokenData
    kind: str  # gpt or bigram
    ckpt: Any  # the checkpoint resumed (--resume), or None


def _train_setup(args: argparse.Namespace, say: Callable[[str], None]) -> _TrainRun:
    """Check --out, --model, --resume and the configs against the corpus, before any training (one line each)."""
    from gptcore.checkpoint import check_save_path, load_checkpoint
    from gptcore.data import TokenData

    check_save_path(args.out)  # before any work: not after an hour of training
    spec = user_model(args)
    if spec:  # a class that cannot train fails here, in one line, before the corpus is even read
        from gptcore.usermodel import probe

        probe(spec)
    ckpt = load_checkpoint(args.out, model=spec) if args.resume else None
    data = TokenData.open(args.data, progress=not (args.no_progress or args.quiet))
    if ckpt is not None:
        if ckpt.tokenizer.to_dict() != data.tokenizer.to_dict():
            raise UserError(f"{args.out}: checkpoint vocabulary differs from the corpus in {args.data}")
        args.model = ckpt.kind
        spec = ckpt.model_cfg.model  # load_checkpoint checked that --model names it
    kind = args.model if args.model in ("gpt", "bigram") else "gpt"
    model_cfg, train_cfg = resolve_configs(
        args, data.vocab_size, (ckpt.model_cfg, ckpt.train_cfg) if ckpt else None)
    if args.config is not None and model_cfg.model and not spec:  # never run code the user did not name
        raise UserError(f"--config {args.config}: its model is the class {model_cfg.model}, whose code runs only "
                        f"when you name it: pass --model {model_cfg.model}")
    model_cfg = dataclasses.replace(model_cfg, model=spec)  # --model names what trains (a config's extra stays)
    if ckpt and model_cfg != ckpt.model_cfg:
        raise UserError("--resume: model flags differ from the checkpoint's model; only training flags may change")
    if kind == "gpt" and not spec:
        check_model_fits(model_cfg, train_cfg, args)
    say(f"data: {data.folder} (vocab {data.vocab_size}, train {len(data.tokens('train')):,}, "
        f"val {len(data.tokens('val')):,} tokens)")
    say(f"model: {model_cfg}\ntrain: {train_cfg}")
    return _TrainRun(model_cfg, train_cfg, data, kind, ckpt)


def cmd_train(args: argparse.Namespace) -> int:
    """Train (or resume), print losses and final figures, save the checkpoint; Ctrl-C saves and exits 130."""
    from tqdm import tqdm

    from gptcore.cliutil import EXIT_INTERRUPTED
    from gptcore.curve import read_curve
    from gptcore.errors import Diverged
    from gptcore.layout import CURVE
    from gptcore.train import train

    name = f"{prog(PROG)} train"
    say = (lambda line: None) if args.quiet else tqdm.write  # through tqdm: a live bar is redrawn below the line
    run = _train_setup(args, say)
    ckpt = run.ckpt

    def on_eval(step: int, train_loss: float, val_loss: float) -> None:
        say(f"step {step}: train loss {train_loss:.4f}, val loss {val_loss:.4f}")

    model = ckpt.build_model() if ckpt else None
    if model is not None:
        model.train()
    try:  # a resumed run's curve goes on from the earlier one's
        curve = read_curve(args.out / CURVE) if ckpt else []
    except ValueError as exc:
        raise UserError(f"--resume: {exc}; move it away to start the curve afresh") from None
    stop = threading.Event()
    with ctrl_c_stops(stop):  # also during the save: a second Ctrl-C there rolls the save back
        try:
            result = train(run.model_cfg, run.train_cfg, run.data, on_eval=on_eval, model=model,
                           optimizer_state=ckpt.optimizer_state if ckpt else None,
                           start_step=ckpt.step if ckpt else 0,
                           progress=False if args.no_progress or args.quiet else None,  # None: on a terminal
                           kind=run.kind, interrupt=stop, on_log=curve.append)
        except Diverged as exc:
            print(f"{name}: training diverged: {exc}; try a lower --lr or --dtype float32",
                  file=sys.stderr)
            return 1
        step = (ckpt.step if ckpt else 0) + result.steps
        if result.stopped_by == "interrupted" and result.steps == 0:
            print(f"{name}: interrupted before the first step; nothing saved", file=sys.stderr)
            return EXIT_INTERRUPTED
        path = _save_with_curve(args.out, run, result, step, curve, name)
    if result.stopped_by == "interrupted":
        print(f"{name}: interrupted: checkpoint saved at step {step} ({result.steps} steps this "
              f"run) to {path}; continue with --resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    print(_done_line(result, step))
    print(f"checkpoint: {path}")
    return EXIT_INTERRUPTED if stop.is_set() else 0


def _save_with_curve(out: Path, run: _TrainRun, result: Any, step: int, curve: list, name: str) -> Path:
    """Save the checkpoint, then its curve beside it (a save replaces the whole folder). A kill in between leaves
    the checkpoint complete and its curve missing, never a curve of another checkpoint."""
    from gptcore.checkpoint import save_checkpoint
    from gptcore.curve import write_curve
    from gptcore.layout import CURVE

    path = save_checkpoint(out, result.model, run.model_cfg, run.train_cfg, run.data.tokenizer,
                           optimizer=result.optimizer, step=step, kind=run.kind, extra={"result": result.to_dict()})
    try:
        write_curve(path / CURVE, curve)
    except OSError as exc:  # a full disk: the checkpoint is saved, only its curve is missing
        print(f"{name}: {path / CURVE}: not written ({exc})", file=sys.stderr)
    return path


def _done_line(result: Any, step: int) -> str:
    """The run's last line: steps, losses, times, speed, peak memory, parameters and MFU."""
    mem = result.peak_memory
    mem_text = (f"peak CUDA allocated {mem['peak_allocated_bytes'] / 2**20:.0f} MiB"
                if "peak_allocated_bytes" in mem else f"peak RSS {mem['peak_rss_bytes'] / 2**20:.0f} MiB")
    mfu = f", MFU {result.mfu:.1%}" if result.mfu is not None else ""
    return (f"done: {result.steps} steps (to step {step}), train loss {result.train_loss:.4f}, "
            f"val loss {result.val_loss:.4f}, {result.train_seconds:.1f} s training + {result.eval_seconds:.1f} s "
            f"eval, {result.tokens_per_s:,.0f} tokens/s, {mem_text}, {result.n_params:,} parameters{mfu}")


def cmd_finetune(args: argparse.Namespace) -> int:
    """Fine-tune --checkpoint on --data; print the held-out loss before and after; save to --out."""
    from gptcore.checkpoint import check_save_path, load_checkpoint, save_checkpoint
    from gptcore.config import MODEL_FIELDS
    from gptcore.finetune import eos_share, finetune, finetune_config, fit_vocabulary
    from gptcore.pairs import encode_pairs, read_pairs, split_pairs

    overrides = config_overrides(args)
    model_flags = sorted(MODEL_FIELDS & overrides.keys())
    if model_flags:
        shown = ", ".join("--" + k.replace("_", "-") for k in model_flags)
        raise UserError(f"{shown}: the model comes from --checkpoint; only training flags may change")
    check_save_path(args.out)  # before any work: nothing is written when the output cannot be
    ckpt = load_checkpoint(args.checkpoint, with_optimizer=False, user_models=False)  # grows gptcore's layers
    cfg = finetune_config(ckpt.train_cfg, overrides)
    pairs = read_pairs(args.data)
    train_pairs, val_pairs = split_pairs(pairs, args.val_fraction, cfg.seed)
    model = ckpt.build_model()
    tokenizer, added = fit_vocabulary(model, ckpt.tokenizer, pairs, args.extend_vocab)
    block = model.config.block_size
    train_ex = encode_pairs(train_pairs, tokenizer, tokenizer.eos_id, block)
    val_ex = encode_pairs(val_pairs, tokenizer, tokenizer.eos_id, block)
    say = (lambda line: None) if args.quiet else print
    say(f"pairs: {len(train_pairs)} train, {len(val_pairs)} validation (seed {cfg.seed}); vocabulary "
        f"{ckpt.tokenizer.vocab_size} -> {tokenizer.vocab_size}" + (f" (added {', '.join(map(repr, added))})"
                                                                      if added else ""))
    result = finetune(model, train_ex, val_ex, cfg, on_eval=lambda step, tr, va: say(
        f"step {step}: train loss {tr:.4f}, validation loss {va:.4f} (completion tokens)"))
    result.added_tokens = added
    share, _ = eos_share(result.model, tokenizer, val_pairs, args.max_new_tokens)
    path = save_checkpoint(args.out, result.model, result.model.config, cfg, tokenizer,
                           optimizer=result.optimizer, step=ckpt.step + result.steps, kind=ckpt.kind,
                           extra={"finetune": {**result.to_dict(), "eos_share": share, "base": str(args.checkpoint),
                                               "data": str(args.data)}})
    print(f"done: {result.steps} steps; validation loss on {len(val_pairs)} held-out pairs (completion + EOS "
          f"tokens) {result.val_loss_before:.4f} before, {result.val_loss_after:.4f} after; "
          f"{share:.0%} of greedy answers stop at EOS within {args.max_new_tokens} tokens")
    print(f"checkpoint: {path}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    """Print a continuation of --prompt, or run the chat loop."""
    from gptcore.checkpoint import load_checkpoint
    from gptcore.hardware import resolve_device
    from gptcore.precision import at_precision, check_precision
    from gptcore.sample import chat, sample_text

    device = resolve_device(args.device)
    check_precision(args.precision, device)  # before reading the checkpoint: a refusal costs nothing
    ckpt = load_checkpoint(args.checkpoint, with_optimizer=False, model=user_model(args))
    model = at_precision(ckpt.build_model(device), args.precision, device)
    kwargs = dict(max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                  seed=args.seed)
    if args.command == "chat":
        chat(model, ckpt.tokenizer, drop_unknown=args.drop_unknown, **kwargs)
        return 0
    print(args.prompt + sample_text(model, ckpt.tokenizer, args.prompt, drop_unknown=args.drop_unknown, **kwargs))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point."""
    args = build_parser().parse_args(argv)
    handler = {"prepare": cmd_prepare, "train": cmd_train, "finetune": cmd_finetune, "sample": cmd_sample,
               "chat": cmd_sample}
    return handler[args.command](args)


def cli() -> None:
    """The `gptcore` console command: main() with one-line errors and exit codes, as `python -m gptcore`."""
    console(main, PROG)


if __name__ == "__main__":
    cli()
