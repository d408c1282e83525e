"""Tables, files and the plot of the benchmarks."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pandas as pd

from gptcore.errors import UserError
from gptcore.files import atomic_write, atomic_write_text, check_output_dir
from tune.core import units

TABLE = ["device", "dtype", "lib", "size", "transfer", "wall_ms", "wall_iqr_ms", "cpu_ms", "cpu_per_wall", "gflops",
         "share_of_peak", "speedup_vs_cpu", "cold_ms", "rel_error", "contended"]
# Each figure's unit (tune.core.units: the rounding every report shares); the others print as they are.
COLUMN_UNITS = {"wall_ms": units.MS, "wall_iqr_ms": units.MS, "cpu_ms": units.MS, "cold_ms": units.MS,
                "gflops": units.GFLOPS, "timer_gflops": units.GFLOPS, "share_of_peak": units.SHARE,
                "speedup_vs_cpu": units.RATIO, "cpu_per_wall": units.Unit("", 1, 2)}


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
    return json.loads(rows.to_json(orient="records", double_precision=15))


# What names a case in a warning: matmul's (device, dtype, lib, size), train-step's (config, arch, ..., compile).
CASE_COLUMNS = ("config", "arch", "device", "dtype", "lib", "size", "compile")


def contention_lines(df: pd.DataFrame) -> list[str]:
    """Warnings for the cases measured while other processes competed for the CPU: their figures understate it."""
    if "contended" not in df:
        return []
    hit = df[df["contended"].notna() & (df["contended"] != "")]
    if hit.empty:
        return []
    keys = [c for c in CASE_COLUMNS if c in df]
    cases = ", ".join(" ".join(str(r[c]) for c in keys) for _, r in hit.head(6).iterrows())
    more = f" and {len(hit) - 6} more" if len(hit) > 6 else ""
    return [f"warning: {len(hit)} of {len(df)} case(s) ran while other processes competed for the CPU ({cases}"
            f"{more}; e.g. {hit['contended'].iloc[0]}): their times overstate and their speeds understate this "
            f"machine. Re-run on a quiet machine."]


def readable(df: pd.DataFrame) -> str:
    """A results table as a person reads it: no column that is empty in every case (MFU with no known peak, GPU
    memory on the CPU), blanks rather than None, and the contended flag as yes or blank."""
    shown = df.dropna(axis="columns", how="all").copy()
    if "contended" in shown:  # the reason is in the warning under the table and in the JSON
        shown["contended"] = shown["contended"].map(lambda v: "yes" if isinstance(v, str) and v else "")
    with pd.option_context("display.width", 250, "display.max_columns", 30):
        return shown.round(3).to_string(index=False, na_rep="")


def print_table(df: pd.DataFrame, notes: bool = True) -> None:
    """The readable matmul table on the terminal; with notes, each peak's source and the Timer cross-checks."""
    cols = [c for c in TABLE if c in df] + (["timer_gflops"] if "timer_gflops" in df else [])
    if "speedup_vs_cpu" in df and df["speedup_vs_cpu"].isna().all():
        cols.remove("speedup_vs_cpu")  # no GPU row: a column of blanks says nothing (the no-GPU line says why)
    shown = df[cols].copy()
    shown["transfer"] = shown["transfer"].map({True: "yes", False: ""})
    if "contended" in shown:  # a flag in the table; the reason is in the warning below it and in the JSON
        if shown["contended"].isna().all():
            shown = shown.drop(columns="contended")
        else:
            shown["contended"] = shown["contended"].map(lambda v: "yes" if isinstance(v, str) and v else "")
    for col, unit in COLUMN_UNITS.items():
        if col in shown:
            shown[col] = shown[col].map(lambda v, unit=unit: "" if units.missing(v) else unit.text(v))
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.float_format",
                           lambda v: f"{v:.4g}"):
        print(shown.to_string(index=False, na_rep=""))
    if not notes:  # --quiet: the table alone (its "contended" column still flags those cases)
        return
    for warning in contention_lines(df):
        print(warning)
    if "peak_source" in df:
        for p in peaks(df):
            rate = "unknown" if p["peak_gflops"] is None else units.GFLOPS.text(p["peak_gflops"], True)
            print(f"peak {p['device']} {p['dtype']}: {rate} ({p['peak_source']})")
    if "timer_gflops" in df:
        for _, r in df.dropna(subset=["timer_gflops"]).iterrows():
            diff = r["gflops"] / r["timer_gflops"] - 1
            print(f"check {r['device']} {r['dtype']} {r['lib']} {r['size']}: {units.GFLOPS.text(r['gflops'], True)} "
                  f"here, {units.GFLOPS.text(r['timer_gflops'])} from torch.utils.benchmark.Timer.blocked_autorange "
                  f"({units.ERROR.text(diff, sign=True)})")


def write_frame(df: pd.DataFrame, path: Path) -> Path:
    """A CSV, atomically."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))


def write_matmul(df: pd.DataFrame, env: dict[str, Any], crossover: dict[str, str | None], out: Path,
                 note: dict[str, str] | None = None, cpu_peak: dict[str, Any] | None = None) -> list[Path]:
    """matmul.csv, matmul.json (shape: benchmarks.matmul's docstring) and matmul.png.

    crossover: per GPU series (what the plot marks); note: what the JSON's crossover says instead on a run
    without a GPU; cpu_peak: per CPU dtype, the benchmarks.matmul.CpuPeak fields.
    """
    out.mkdir(parents=True, exist_ok=True)
    doc = {"environment": env, "crossover": crossover or note or {}, "gpu": bool((df["device"] != "cpu").any()),
           "cpu_peak": cpu_peak or {}, "peaks": peaks(df) if "peak_source" in df else [],
           "results": json.loads(df.to_json(orient="records", double_precision=15))}
    paths = [write_frame(df, out / "matmul.csv"),
             atomic_write_text(out / "matmul.json", json.dumps(doc, indent=1, default=str) + "\n"),
             plot_matmul(df, crossover, out / "matmul.png")]
    return paths


def plot_matmul(df: pd.DataFrame, crossover: dict[str, str | None], path: Path) -> Path:
    """matmul.png: the two panels of matmul_figure."""
    import matplotlib.pyplot as plt

    fig = matmul_figure(df, crossover)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def _series(df: pd.DataFrame):
    d = df.assign(x=(df["m"] * df["n"] * df["k"]) ** (1 / 3)).sort_values("x")
    for (device, dtype, lib, transfer), rows in d.groupby(["device", "dtype", "lib", "transfer"], sort=False):
        yield f"{device} {dtype} {lib}" + (" +transfer" if transfer else ""), bool(transfer), rows


def _quartiles_ms(rows: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Q1 and Q3 of the wall time; rows from before they were recorded get median -/+ IQR/2."""
    if {"wall_q1_ms", "wall_q3_ms"} <= set(rows):
        return rows["wall_q1_ms"], rows["wall_q3_ms"]
    half = rows["wall_iqr_ms"] / 2 if "wall_iqr_ms" in rows else 0 * rows["wall_ms"]
    return rows["wall_ms"] - half, rows["wall_ms"] + half


def matmul_figure(df: pd.DataFrame, crossover: dict[str, str | None]):
    """Wall time (ms) and GFLOP/s against size, side by side; IQR bars on both; each peak as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_r) = plt.subplots(1, 2, figsize=(14, 5.5))
    colours = {}
    for i, (label, transfer, rows) in enumerate(_series(df)):
        colour = colours.setdefault(label, f"C{i % 10}")
        q1, q3 = _quartiles_ms(rows)
        style = dict(marker="o", linestyle="--" if transfer else "-", color=colour, capsize=3, label=label)
        ax_t.errorbar(rows["x"], rows["wall_ms"], yerr=[rows["wall_ms"] - q1, q3 - rows["wall_ms"]], **style)
        # A rate's quartiles are the wall time's, swapped: the slowest quarter of blocks gives the lowest rate.
        # (The same FLOPs in a quartile's time: the rate scales with median / quartile.)
        low, high = rows["gflops"] * rows["wall_ms"] / q3, rows["gflops"] * rows["wall_ms"] / q1
        ax_r.errorbar(rows["x"], rows["gflops"], yerr=[rows["gflops"] - low, high - rows["gflops"]], **style)
    if "peak_gflops" in df:
        for p in peaks(df):
            if p["peak_gflops"] is None:
                continue
            colour = next((c for lbl, c in colours.items() if lbl.startswith(f"{p['device']} {p['dtype']} ")), "k")
            ax_r.axhline(p["peak_gflops"], color=colour, linestyle="--", linewidth=1,
                         label=f"peak {p['device']} {p['dtype']}: {units.GFLOPS.text(p['peak_gflops'], True)}\n"
                               f"{textwrap.fill(p['peak_source'], 48)}")
    d = df.assign(x=(df["m"] * df["n"] * df["k"]) ** (1 / 3))
    for series, size in crossover.items():
        if size is None:
            continue
        x = float(d[d["size"] == size]["x"].iloc[0])
        for ax in (ax_t, ax_r):
            ax.axvline(x, color="grey", linestyle=":", linewidth=1)
        ax_r.annotate(f"crossover {series}: {size}", (x, 0.5), xycoords=("data", "axes fraction"), fontsize=7,
                      rotation=90, ha="right", va="center")
    xlabel = "matrix size (N, or MxNxK at the cube root of M*N*K; log scale)"
    ax_t.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="wall time per call (ms, log scale)",
             title="Wall time per matmul (median, IQR bars)")
    ax_r.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="GFLOP/s (2*M*N*K / wall time, log scale)",
             title="Throughput (median, IQR bars; dashed: peak)")
    ticks = d.drop_duplicates("x").sort_values("x")
    for ax in (ax_t, ax_r):
        ax.grid(True, which="both", alpha=0.3)
        ax.set_xticks(ticks["x"], ticks["size"], minor=False)  # the sizes measured, as the table names them
        ax.set_xticks([], minor=True)
    ax_t.legend(fontsize=8, loc="upper left")
    ax_r.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig

