"""The page of `tune card`: one self-contained HTML file (inline CSS, figures as base64 PNG, the raw figures as
JSON in a script block for machine checks): nothing on it is fetched from anywhere."""

from __future__ import annotations

import base64
import html
import io
import json
import re
from typing import Any

from tune.core import units

# The card's kinds of figure -> their unit (tune.core.units: the rounding every report shares). The raw values stay
# in the card-data block.
UNITS: dict[str, units.Unit] = {
    "mib": units.MIB, "ktok": units.KTOK, "gflops": units.GFLOPS, "loss": units.LOSS, "params": units.PARAMS,
    "s": units.SECONDS, "lr": units.LR, "int": units.WHOLE, "share": units.SHARE,
}


def fmt(kind: str, value: Any, unit: bool = False) -> str:
    """A figure as the card shows it ('-' when missing); with unit=True, followed by its unit."""
    return UNITS[kind].text(value, unit)


def esc(value: Any) -> str:
    """Text for HTML."""
    return html.escape(str(value))


# A figure a table cell must not break across lines: 1,234.5, 2.00e-03, 42%, 400 MiB, 38.2 (96%).
NUMBER = re.compile(r"[-+]?\d[\d,.]*(e[-+]?\d+)?(%| [A-Za-z/]+)?( \([-+\d.,]+%\))?")


def _cell(value: Any) -> str:
    """A <td>; a number's carries class "num" (white-space: nowrap) so the figure never wraps."""
    text = str(value)
    return f'<td class="num">{esc(text)}</td>' if NUMBER.fullmatch(text) else f"<td>{esc(text)}</td>"


def table(header: list[str] | None, rows: list[list[str]], cls: str = "") -> str:
    """An HTML table of formatted (not yet escaped) cells; header None: none."""
    head = "<thead><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr></thead>" if header else ""
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f'<table class="{cls}">{head}<tbody>{body}</tbody></table>'


def png(fig: Any) -> str:
    """A matplotlib figure as a data: URI (the page stays one file)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure(fig: Any, name: str, caption: str) -> str:
    """<figure> holding the plot, named for checks (data-figure) and captioned."""
    return (f'<figure data-figure="{esc(name)}"><img alt="{esc(caption)}" src="{png(fig)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def series_name(row: dict[str, Any]) -> str:
    """'cpu float32 torch' (+transfer): one line of the matmul plot."""
    return f"{row['device']} {row['dtype']} {row['lib']}" + (" +transfer" if row.get("transfer") else "")


def edge(row: dict[str, Any]) -> float:
    """A size's cube root of M*N*K: N for a square product."""
    return (row["m"] * row["n"] * row["k"]) ** (1 / 3)


def matmul_plot(rows: list[dict[str, Any]], peaks: list[dict[str, Any]]) -> Any:
    """GFLOP/s against size, one line per device x dtype x library, each device and dtype's peak dashed."""
    plt = _plt()
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    fig, ax = plt.subplots(figsize=(8, 4))
    names = sorted({series_name(r) for r in rows})
    for i, name in enumerate(names):
        pts = sorted((edge(r), r["gflops"]) for r in rows if series_name(r) == name)
        ax.plot(*zip(*pts), "-o", color=f"C{i}", label=name)
    for j, p in enumerate(q for q in peaks if isinstance(q.get("peak_gflops"), (int, float))):
        ax.axhline(p["peak_gflops"], ls="--", lw=1.2, color=f"C{j}", alpha=0.6,
                   label=f"peak {p['device']} {p['dtype']}: {fmt('gflops', p['peak_gflops'], True)}")
    ax.set_xscale("log", base=2)
    edges = sorted({round(edge(r)) for r in rows})
    ax.set_xticks(edges, [str(e) for e in edges])
    ax.xaxis.set_minor_formatter(NullFormatter())
    rates = [r["gflops"] for r in rows if r["gflops"] > 0]
    if rates and max(rates) > 20 * min(rates):  # CPU and GPU on one plot: only a log axis shows both
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(ScalarFormatter())
    else:
        ax.set_ylim(bottom=0)
    ax.set(xlabel="matrix size N (N x N @ N x N; cube root of M*N*K otherwise)", ylabel="GFLOP/s",
           title="Matrix multiplication rate")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def loss_plot(trials: list[dict[str, Any]], winner: str | None) -> Any:
    """Validation loss against k tokens/s, colour = peak MiB, trial labels on the points, the winner ringed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    x = [t["tokens_per_s"] / 1e3 for t in trials]
    y = [t["val_loss"] for t in trials]
    mem = [(t["peak_memory_bytes"] or 0) / units.MiB for t in trials]
    points = ax.scatter(x, y, c=mem, cmap="viridis", s=60, edgecolors="k", linewidths=0.5)
    fig.colorbar(points, ax=ax, label="peak memory (MiB)")
    for t, xi, yi in zip(trials, x, y):
        ax.annotate(t["label"], (xi, yi), fontsize=8, xytext=(8, 6), textcoords="offset points")
        if t["label"] == winner:  # ringed, so the best reads at a glance among close points
            ax.scatter([xi], [yi], s=260, facecolors="none", edgecolors="C3", linewidths=2, label="best")
    if winner in {t["label"] for t in trials}:
        ax.legend(fontsize=8)
    ax.set(xlabel="training throughput (k tokens/s)", ylabel="validation loss at the target",
           title="Loss vs throughput vs memory (trials that trained to the target)")
    return fig


def size_plot(trials: list[dict[str, Any]]) -> Any:
    """k tokens/s against parameters (millions), one colour per status."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, status in enumerate(sorted({t["status"] for t in trials})):
        group = [t for t in trials if t["status"] == status]
        xs, ys = [t["n_params"] / 1e6 for t in group], [t["tokens_per_s"] / 1e3 for t in group]
        ax.scatter(xs, ys, s=50, color=f"C{i}", label=status)
        for t, xi, yi in zip(group, xs, ys):
            ax.annotate(t["label"], (xi, yi), fontsize=8, xytext=(5, 4), textcoords="offset points")
    sizes = [t["n_params"] for t in trials]
    if max(sizes) > 10 * min(sizes):
        from matplotlib.ticker import ScalarFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())  # 0.1 and 1, not 10^-1 and 10^0
    ax.set(xlabel="model size (M parameters)", ylabel="training throughput (k tokens/s)",
           title="Throughput against model size")
    ax.legend(fontsize=8)
    return fig


def data_block(data: dict[str, Any]) -> str:
    """The card's raw figures as JSON, for machine checks ('</' escaped so the block cannot end early)."""
    text = json.dumps(data, indent=1, allow_nan=False).replace("</", "<\\/")
    return f'<script type="application/json" id="card-data">\n{text}\n</script>'


CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 24px auto; max-width: 1100px;
       padding: 0 16px; color: #1b1b1b; line-height: 1.45; }
h1 { margin-bottom: 0; } h2 { border-bottom: 2px solid #ddd; padding-bottom: 4px; margin-top: 32px; }
.sub { color: #555; margin-top: 4px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f2f2f2; } td:first-child, th:first-child { text-align: left; }
table.facts td { text-align: left; }
td.num { white-space: nowrap; }
figure { margin: 8px 0 16px; } figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: 13px; } .note { background: #fff6dd; padding: 6px 10px; }
.source { color: #555; font-size: 13px; }
"""


def page(title: str, sections: list[str], data: dict[str, Any]) -> str:
    """The whole HTML document."""
    body = "\n".join(sections)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
            f"<style>{CSS}</style></head>\n<body>\n{body}\n{data_block(data)}\n</body></html>\n")
