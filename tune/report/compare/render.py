"""What `python -m tune compare` writes: compare.md (the studies, their best configurations, the speed-up per
shared configuration, the out-of-memory frontiers) and compare.png."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from tune.core import schema, units
from tune.core.outcomes import COUNTED, Status
from tune.report.compare.data import SHAPE, Side, geometric_mean, shared_speeds, speeds
from tune.report.frame import choose_winner, extra_params, label, oom_frontier, originals, time_span

# --- formatting: units and rounding come from tune.core.units (the same as every other report) ---------------


KTOK = units.KTOK.text  # training tokens/s, in thousands
MIB = units.MIB.text  # bytes, in MiB
LOSS = units.LOSS.text
LR = units.LR.text
WHOLE = units.WHOLE.text


def GIB(v: Any) -> str:  # noqa: N802 - named like the other formatters
    """Bytes in GiB, with the unit."""
    return units.GIB.text(v, unit=True)


def RATIO(v: Any) -> str:  # noqa: N802
    """A speed-up: 1.23x ('-' when missing)."""
    return units.RATIO.text(v, unit=True).replace(" x", "x")


def _shape(key: Iterable[Any]) -> str:
    """A shape key (SHAPE order) for a plot label: '16x128 L2 E128 H4'."""
    batch, block, embed, heads, layers = key
    return f"{batch}x{block} L{layers} E{embed} H{heads}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [f"| {' | '.join(header)} |", f"|{'|'.join(' --- ' for _ in header)}|",
            *(f"| {' | '.join(str(c) for c in r)} |" for r in rows), ""]


# --- compare.md ----------------------------------------------------------------------------------------------


def markdown(sides: list[Side]) -> str:
    """compare.md: every section, the studies in the order given (the first is the baseline)."""
    lines = [f"# {' vs '.join(s.name for s in sides)}", "",
             f"{len(sides)} studies side by side, one column each; the baseline of every speed-up is the first, "
             f"**{sides[0].name}**.", ""]
    lines += studies_section(sides) + best_section(sides) + speed_section(sides) + frontier_section(sides)
    return "\n".join([*lines, "![tokens/s of each shared configuration](compare.png)", ""])


def _dates(side: Side) -> str:
    """The days the study's trials ran: '2026-11-26' or '2026-11-26 .. 2026-11-28'."""
    span = time_span(side.study)
    if span is None:
        return "-"
    first, last = span.start.date().isoformat(), span.end.date().isoformat()
    return f"{first} (UTC)" if first == last else f"{first} .. {last} (UTC)"


def _device(env: dict[str, Any]) -> str:
    detail = (f"{env.get('cpu_threads')} thread(s)" if env.get("device_type") == "cpu"
              else GIB(env.get("gpu_memory_bytes")) if env.get("gpu_memory_bytes") else "")
    return f"{env.get('device_name', '?')} ({', '.join(d for d in (env.get('device'), detail) if d)})"


def _corpus(settings: dict[str, Any]) -> str:
    # By file name: the same corpus lives at different paths on different machines.
    return Path(str(settings.get("corpus") or "?")).name


def studies_section(sides: list[Side]) -> list[str]:
    """What each study is: device, dtype, target, corpus, trials counted, dates."""
    rows: dict[str, list[str]] = {k: [] for k in ("study", "results folder", "model", "device", "torch", "dtype",
                                                  "target budget per configuration", "objective", "corpus",
                                                  "runs counted", "runs flagged contended", "dates")}
    for s in sides:
        runs = originals(s.df)
        searched, refs = runs[runs["reference"].isna()], runs[runs["reference"].notna()]
        counted = int(searched["status"].isin(COUNTED).sum())
        confirms = len(s.df) - len(runs)
        for key, value in (
                ("study", f"`{s.study.study_name}`"), ("results folder", str(s.folder)), ("model", _model(s)),
                ("device", _device(s.env)),
                ("torch", s.env.get("torch", "?")), ("dtype", s.settings.get("dtype", "?")),
                ("target budget per configuration", s.settings.get("budget", "?")),
                ("objective", s.settings.get("objective", "loss")), ("corpus", _corpus(s.settings)),
                ("runs counted", f"{counted} trials of {s.settings.get('trials', '?')}, {len(refs)} reference(s)"
                                 + (f", {confirms} confirmation runs" if confirms else "")),
                ("runs flagged contended", str(int((s.df["contended"].notna() & (s.df["contended"] != "")).sum()))),
                ("dates", _dates(s))):
            rows[key].append(str(value))
    return ["## The studies", "", *_table(["", *(s.name for s in sides)], [[k, *v] for k, v in rows.items()])]


def _model(side: Side) -> str:
    """The model class the study tuned (--model), or gptcore's GPT."""
    spec = side.settings.get("model") or ""
    return f"`{spec}`" if spec else "gptcore's GPT"


def _differ(sides: list[Side], what: str, value: Callable[[Side], str]) -> list[str]:
    values = [value(s) for s in sides]
    if len(set(values)) == 1:
        return []
    listed = ", ".join(f"{s.name}: {v}" for s, v in zip(sides, values))
    return [f"**Warning**: the studies differ in {what} ({listed}): their losses are not comparable; tokens/s "
            f"still are.", ""]


def best_section(sides: list[Side]) -> list[str]:
    """Each study's winner (tune.report.frame.choose_winner): its six values and figures at its target."""
    header = ["", *(s.name for s in sides)]
    # The fields any study searched beside the six, a row each ('-' for a study that did not search it).
    extra = list(dict.fromkeys(p for s in sides for p in extra_params(s.df)))
    names = ["configuration", "batch", "block", "embed", "heads", "layers", "learning rate", *extra,
             "val loss at the target", "k tokens/s", "peak MiB"]
    columns = []
    for s in sides:
        winner = choose_winner(s.df, s.settings)
        if winner is None:
            columns.append(["none trained to the target", *["-"] * (len(names) - 1)])
            continue
        r = winner.row
        name = label(r)
        loss = LOSS(r["val_loss"]) if winner.line is None else (
            f"{LOSS(winner.line['mean'])} (mean of {int(winner.line['n'])} runs)")
        columns.append([f"trial {name}" if name.isdigit() else name, *(WHOLE(r[k]) for k in SHAPE),
                        LR(r["learning_rate"]), *(schema.param_text(r.get(p)) or "-" for p in extra), loss,
                        KTOK(r["tokens_per_s"]), MIB(r["peak_memory_bytes"])])
    lines = ["## Best configuration of each study", "",
             "The winner each study chose (by its objective, at its own target budget; confirmed by repeated runs "
             "where the study confirmed).", ""]
    lines += _differ(sides, "target budget", lambda s: str(s.settings.get("budget")))
    lines += _differ(sides, "corpus", lambda s: _corpus(s.settings))
    lines += _differ(sides, "model", _model)
    objectives = {s.settings.get("objective", "loss") for s in sides}
    if len(objectives) > 1:
        lines += ["Note: the studies chose their winners by different objectives (loss, throughput).", ""]
    return lines + _table(header, [[n, *(c[i] for c in columns)] for i, n in enumerate(names)])


def speed_section(sides: list[Side]) -> list[str]:
    """Tokens/s of the configurations every study ran, the speed-up of each, and the geometric mean."""
    base = sides[0]
    shared = shared_speeds(sides)
    measured = ", ".join(f"{s.name} {len(speeds(s.df))}" for s in sides)
    lines = ["## Speed on the configurations all studies ran", "",
             "Matched on the model and batch shape (batch, block, embed, heads, layers): the learning rate does not "
             "change the speed, so runs that differ only in it count as one configuration. Each figure is the "
             "median training tokens/s (thousands) over every run of that shape that measured it (trained to the "
             "target or pruned), with the number of runs; the speed-up is a study's tokens/s over the baseline's "
             f"(**{base.name}**): above 1 faster, below 1 slower.", "",
             f"Configurations measured: {measured}; shared by all: {len(shared)}.", ""]
    if shared.empty:
        return [*lines, f"No configuration ran in all studies, so no speed-up can be measured. To get shared "
                f"ones, run the later study with `--warm-start {base.given}` (the baseline's best configurations "
                f"become its first trials), or with the same `--seed`, search space and `--references` (the "
                f"reference presets always run the same shapes).", ""]
    header = ["batch", "block", "embed", "heads", "layers", *(f"{s.name} k tokens/s (runs)" for s in sides),
              *((f"speed-up {s.name}" for s in sides[1:]) if len(sides) > 2 else ["speed-up"])]
    rows = [[*map(str, key), *(_speed_cell(r, i) for i in range(len(sides))),
             *(RATIO(r[f"speedup_{i}"]) for i in range(1, len(sides)))] for key, r in shared.iterrows()]
    lines += _table(header, rows)
    for i, s in enumerate(sides[1:], start=1):
        ratios = shared[f"speedup_{i}"]
        spread = f" (from {RATIO(ratios.min())} to {RATIO(ratios.max())})" if len(ratios) > 1 else ""
        lines.append(f"- **{s.name}** over **{base.name}**: geometric-mean speed-up "
                     f"**{RATIO(geometric_mean(ratios))}** over {len(ratios)} shared configuration(s){spread}")
    contended = sum(int(shared[f"contended_{i}"].sum()) for i in range(len(sides)))
    if contended:
        lines.append(f"- **warning**: {contended} of these runs were contended (other processes competed for the "
                     f"device; marked in the table): their tokens/s understate the configuration, which skews its "
                     f"speed-up. Re-run on a quiet machine.")
    return [*lines, ""]


def _speed_cell(r: pd.Series, i: int) -> str:
    """'2.48 (3)': study i's median k tokens/s and runs, with how many were contended."""
    runs, contended = int(r[f"runs_{i}"]), int(r[f"contended_{i}"])
    return f"{KTOK(r[f'tokens_per_s_{i}'])} ({runs}{f', {contended} contended' if contended else ''})"


def _frontier_cells(side: Side) -> dict[tuple[int, int], str]:
    """Per model size (layers, embed): 'ran B x T (M MiB); OOM B x T; predicted OOM B x T', the parts it has."""
    cells = {}
    for _, r in oom_frontier(originals(side.df)).iterrows():
        ran, oom, skipped = (r[k] for k in ("largest batch x block that ran", "smallest batch x block that OOM'd",
                                            "smallest skipped (predicted OOM)"))
        parts = [f"ran {ran} ({MIB(r['its peak MiB'] * units.MiB)} MiB)"] if ran != "-" else []
        parts += [f"OOM {oom}"] if oom != "-" else []
        parts += [f"predicted OOM {skipped}"] if skipped != "-" else []
        cells[(int(r["layers"]), int(r["embed"]))] = "; ".join(parts) or "-"
    return cells


def frontier_section(sides: list[Side]) -> list[str]:
    """The out-of-memory frontiers side by side, and a line per study on what ran out of memory."""
    cells = [_frontier_cells(s) for s in sides]
    sizes = sorted(set().union(*cells))
    lines = ["## Out-of-memory frontiers", "",
             "Per model size (layers x embedding width): the largest batch x block that ran (its peak memory), "
             "the smallest that ran out of memory, and the smallest skipped as predicted out of memory.", ""]
    for s in sides:
        runs = originals(s.df)
        oom, skipped = int((runs["status"] == Status.OOM).sum()), int((runs["status"] == Status.PREDICTED_OOM).sum())
        limit = s.settings.get("memory_limit_bytes") or s.env.get("gpu_memory_bytes")
        limit_text = f"memory limit {MIB(limit)} MiB" if limit else "no memory limit"
        if oom or skipped:
            lines.append(f"- {s.name}: {oom} run(s) out of memory, {skipped} skipped as predicted out of memory "
                         f"({limit_text})")
        elif runs["peak_memory_bytes"].notna().any():
            lines.append(f"- {s.name}: none ran out of memory, largest tried {MIB(runs['peak_memory_bytes'].max())} "
                         f"MiB peak ({limit_text})")
        else:
            lines.append(f"- {s.name}: no run measured its memory ({limit_text})")
    lines.append("")
    if not sizes:
        return lines
    rows = [[f"{layers} x {embed}", *(c.get((layers, embed), "not tried") for c in cells)] for layers, embed in sizes]
    return lines + _table(["layers x embed", *(s.name for s in sides)], rows)


# --- compare.png ---------------------------------------------------------------------------------------------


def plot(sides: list[Side], path: Path) -> None:
    """compare.png: each shared configuration's tokens/s, the baseline on x, each later study on y (log-log,
    with the y = x line); without shared ones, every study's tokens/s against tokens per step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    shared = shared_speeds(sides)
    fig, ax = plt.subplots(figsize=(7.5, 6))
    if shared.empty:
        for i, s in enumerate(sides):
            sp = speeds(s.df)
            per_step = [b * t for b, t, *_ in sp.index]
            ax.scatter(per_step, sp["tokens_per_s"] / 1e3, color=f"C{i}", alpha=0.8, label=s.name)
        ax.set(xlabel="tokens per step (batch x block, log scale)", ylabel="training tokens/s (thousands, log scale)",
               title="No configuration ran in all studies: each study's runs")
    else:
        x = shared["tokens_per_s_0"] / 1e3
        values = pd.concat([x, *(shared[f"tokens_per_s_{i}"] / 1e3 for i in range(1, len(sides)))])
        low, high = values.min() / 1.5, values.max() * 1.5
        for i, s in enumerate(sides[1:], start=1):
            y = shared[f"tokens_per_s_{i}"] / 1e3
            mean = geometric_mean(shared[f"speedup_{i}"])
            ax.scatter(x, y, color=f"C{i}", zorder=3, label=s.name)
            ax.plot([low, high], [low * mean, high * mean], ":", color=f"C{i}",
                    label=f"{s.name}: geometric-mean speed-up {RATIO(mean)}")
            for k, (key, xi, yi) in enumerate(zip(shared.index, x, y)):
                # Alternate above and below: shapes of one speed sit on top of each other.
                ax.annotate(_shape(key), (xi, yi), fontsize=7, xytext=(5, 3 if k % 2 else -9),
                            textcoords="offset points")
        ax.plot([low, high], [low, high], "--", color="0.5", label="same speed (y = x)")
        ax.set_xlim(low, high)
        ax.set_ylim(low, high)
        other = sides[1].name if len(sides) == 2 else "other studies"
        ax.set(xlabel=f"{sides[0].name} (baseline)\ntraining tokens/s (thousands, log scale)",
               ylabel=f"{other}\ntraining tokens/s (thousands, log scale)",
               title=f"Speed of the {len(shared)} configuration(s) {'both' if len(sides) == 2 else 'all'} studies "
                     f"ran\n(above the line: faster than the baseline)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    for axis in (ax.xaxis, ax.yaxis):  # plain numbers at 1, 2, 5 x 10^k rather than powers of ten
        axis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    plt.close(fig)
