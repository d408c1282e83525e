#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one call of at most 8 minutes, ending with one summary table:
#   1. pytest -m cuda                      (CUDA tests: graphs vs eager losses, dropout, lr, clipping, NaN, data)
#   2. the train-step table                (every compile mode, course and nanoGPT blocks, at nanoGPT's
#                                           shakespeare_char config: 6 layers, 384 wide, 6 heads, block 256,
#                                           batch 64, dropout 0.2, bf16: the `gpu` preset)
#   3. a forced OOM                        (3 trials predicted nothing, limited to 2 GiB: recorded as oom)
#   4. a 3-trial tuner run, 10 s target, --compile graphs (compile_s per trial, the share of the study's wall
#                                           time, trials' tokens/s against the benchmark's graphs row; auto would
#                                           not compile at so short a target)
# Run from the repository root of a fresh copy:  bash scripts/gpu_check.sh [OUT]   (OUT: default results/gpu-check)
# Python: $PYTHON, else .venv/bin/python, else python3; it needs torch with CUDA and the repository's
# dependencies (README: pip install -e .). No network is needed.
# Each check has its own limit (together 470 s); a check cut short by its limit is interrupted (SIGINT), so the
# benchmark keeps its finished cases and the tuner records its trials, and the summary shows what there is.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-results/gpu-check}
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import torch, optuna, gptcore, tune; assert torch.cuda.is_available()" 2>/dev/null; then
    echo "gpu_check: $PY lacks torch with a CUDA GPU, optuna or this repository's packages (pip install -e .)" >&2
    exit 2
fi
mkdir -p "$OUT"
export TORCHINDUCTOR_CACHE_DIR="$OUT/compile-cache" TRITON_CACHE_DIR="$OUT/compile-cache/triton"
rm -rf "$OUT/tune" "$OUT/oom"
declare -a NAMES RCS SECS

step() {  # step NAME LIMIT_S COMMAND...: run with a time limit, log to $OUT/NAME.log, remember rc and seconds
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    echo "== $name (limit ${limit}s): $*" >&2
    timeout --signal=INT --kill-after=15 "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    NAMES+=("$name"); RCS+=("$rc"); SECS+=("$((SECONDS - t0))")
    tail -n 3 "$OUT/$name.log" >&2
}

step pytest-cuda 130 "$PY" -m pytest -m cuda -q -p no:cacheprovider tests
step train-step 170 "$PY" -m benchmarks train-step --devices cuda --configs gpu --dtypes bfloat16 \
    --compile none,default,graphs --arch course,nanogpt --dropout preset --steps 30 --no-progress --out "$OUT"
step forced-oom 40 "$PY" -m tune --device cuda --trials 3 --budget 5s --no-predict --memory-limit 2GiB \
    --batch-size 128,512 --block-size 512,1024 --references none --confirm 0 --no-progress \
    --results "$OUT/oom" --study-name oom
step tuner-3-trials 130 "$PY" -m tune --device cuda --trials 3 --budget 10s --compile graphs --references none \
    --confirm 0 --no-progress --results "$OUT/tune" --study-name gpu-check

"$PY" - "$OUT" "${NAMES[*]}" "${RCS[*]}" "${SECS[*]}" <<'EOF'
"""The summary: one row per check (exit code, seconds, what it measured), then the train-step and trial tables."""
import csv
import json
import re
import sys
from pathlib import Path

out, names, rcs, secs = Path(sys.argv[1]), *(a.split() for a in sys.argv[2:5])
log = {n: (out / f"{n}.log").read_text(errors="replace") if (out / f"{n}.log").exists() else "" for n in names}


def trials(folder):
    files = sorted(Path(folder).rglob("trials.csv"))
    return list(csv.DictReader(files[0].open())) if files else []


def what(name):
    text = log[name]
    if name == "pytest-cuda":
        m = re.findall(r"=+ (.*?) in [\d.]+s", text)
        return m[-1] if m else "no pytest summary"
    if name == "train-step":
        path = out / "train_step.json"
        if not path.exists():
            return "no train_step.json"
        rows = json.loads(path.read_text())["results"]
        best = max(rows, key=lambda r: r["tokens_per_s"])
        return (f"{len(rows)} cases; best {best['arch']} {best['compile']}: {best['tokens_per_s'] / 1e6:.2f} M tok/s, "
                f"MFU {100 * (best['mfu'] or 0):.1f} %")
    rows = trials(out / ("oom" if name == "forced-oom" else "tune"))
    states = {}
    for r in rows:
        states[r.get("status", "?")] = states.get(r.get("status", "?"), 0) + 1
    return f"{len(rows)} trials: " + ", ".join(f"{k} {v}" for k, v in sorted(states.items()))


print("\n| check | exit | seconds | result |\n| --- | ---: | ---: | --- |")
for n, rc, s in zip(names, rcs, secs):
    print(f"| {n} | {rc} | {s} | {what(n)} |")
path = out / "train_step.json"
if path.exists():
    print("\n| arch | compile | tokens/s | ms/step | MFU | compile s | peak MiB |\n| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in json.loads(path.read_text())["results"]:
        print(f"| {r['arch']} | {r['compile']} | {r['tokens_per_s']:,.0f} | {r['ms_per_step']:.2f} | "
              f"{100 * (r['mfu'] or 0):.1f} % | {r['compile_s']:.1f} | {r['peak_allocated_MiB'] or 0:,.0f} |")
rows = trials(out / "tune")
if rows:
    cols = [c for c in ("trial", "status", "val_loss", "tokens_per_s", "mfu", "compile_s", "warmup_s", "train_s",
                        "eval_s", "startup_s", "duration_s", "batch_size", "block_size", "n_embed", "n_layer")
            if c in rows[0]]
    print("\n| " + " | ".join(cols) + " |\n|" + " --- |" * len(cols))
    for r in rows:
        print("| " + " | ".join(r[c] for c in cols) + " |")
    num = lambda r, c: float(r.get(c) or 0)  # noqa: E731
    wall = sum(num(r, "duration_s") for r in rows)
    comp = sum(num(r, "compile_s") for r in rows)
    if wall:
        print(f"\ncompile: {comp:.1f} s of {wall:.1f} s trial wall time ({comp / wall:.0%})")
EOF
