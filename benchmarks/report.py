"""Tables, files and the plot of the benchmarks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from gptcore.errors import UserError
from gptcore.files import atomic_write, atomic_write_text, check_output_dir

TABLE = ["device", "dtype", "lib", "size", "transfer", "wall_ms", "wall_iqr_ms", "cpu_ms", "cpu_per_wall", "gflops",
         "share_of_peak", "speedup_vs_cpu", "cold_ms", "rel_error"]


def check_out_dir(path: Path, flag: str = "--out") -> None:
    """Refuse, before any work, an output folder that cannot be created or written to (the line names the flag)."""
    try:
        check_output_dir(path, "results")
    except UserError as exc:
        raise UserError(f"{flag} {exc}") from None


def peaks(df: pd.DataFrame) -> list[dict[str, Any]]:
    """Each device and dtype's peak GFLOP/s and where it comes from (spec sheet, flag or reference measurement)."""
    cols = ["device", "dtype", "peak_gflops", "peak_source"]
    rows = df[cols].drop_duplicates(subset=["device", "dtype"])
    return json.loads(rows.to_json(orient="records"))


def print_table(df: pd.DataFrame) -> None:
    """The readable matmul table on the terminal."""
    cols = [c for c in TABLE if c in df] + (["timer_gflops"] if "timer_gflops" in df else [])
    shown = df[cols].copy()
    shown["transfer"] = shown["transfer"].map({True: "yes", False: ""})
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format",
                           lambda v: f"{v:.4g}"):
        print(shown.to_string(index=False))
    if "peak_source" in df:
        for p in peaks(df):
            rate = "unknown" if p["peak_gflops"] is None else f"{p['peak_gflops']:.4g} GFLOP/s"
            print(f"peak {p['device']} {p['dtype']}: {rate} ({p['peak_source']})")
    if "timer_gflops" in df:
        for _, r in df.dropna(subset=["timer_gflops"]).iterrows():
            diff = r["gflops"] / r["timer_gflops"] - 1
            print(f"check {r['device']} {r['dtype']} {r['lib']} {r['size']}: {r['gflops']:.1f} GFLOP/s here, "
                  f"{r['timer_gflops']:.1f} from torch.utils.benchmark.Timer.blocked_autorange ({diff:+.1%})")


def write_frame(df: pd.DataFrame, path: Path) -> Path:
    """A CSV, atomically."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def write_matmul(df: pd.DataFrame, env: dict[str, Any], crossover: dict[str, str | None], out: Path) -> list[Path]:
    """matmul.csv, matmul.json (environment, crossover, rows) and matmul.png."""
    out.mkdir(parents=True, exist_ok=True)
    doc = {"environment": env, "crossover": crossover, "peaks": peaks(df) if "peak_source" in df else [],
           "results": json.loads(df.to_json(orient="records"))}
    paths = [write_frame(df, out / "matmul.csv"),
             atomic_write_text(out / "matmul.json", json.dumps(doc, indent=1, default=str) + "\n"),
             plot_matmul(df, crossover, out / "matmul.png")]
    return paths


def plot_matmul(df: pd.DataFrame, crossover: dict[str, str | None], path: Path) -> Path:
    """GFLOP/s vs size, one line per device x dtype x library, crossover sizes marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    d = df.assign(flops=df["m"] * df["n"] * df["k"]).sort_values("flops")
    for (device, dtype, lib, transfer), rows in d.groupby(["device", "dtype", "lib", "transfer"], sort=False):
        label = f"{device} {dtype} {lib}" + (" +transfer" if transfer else "")
        ax.plot(rows["flops"] ** (1 / 3), rows["gflops"], marker="o", linestyle="--" if transfer else "-",
                label=label)
    for series, size in crossover.items():
        if size is None:
            continue
        row = d[d["size"] == size].iloc[0]
        x = (row["m"] * row["n"] * row["k"]) ** (1 / 3)
        ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax.annotate(f"crossover\n{series}: {size}", (x, ax.get_ylim()[1] * 0.5), fontsize=7, rotation=90,
                    ha="right", va="center")
    ax.set(xscale="log", yscale="log", xlabel="matrix size (cube root of M*N*K)", ylabel="GFLOP/s",
           title="Matrix multiplication throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path
