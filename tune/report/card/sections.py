"""The sections of `tune card`, each from the card's raw figures (tune.report.card.gather.gather) to HTML."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tune.core import schema
from tune.core.outcomes import Status
from tune.core.space import PARAMS
from tune.report.card.html import _plt, edge, esc, figure, fmt, loss_plot, matmul_plot, series_name, size_plot, table

PARAM_KIND = {"learning_rate": "lr"}  # the other five are whole numbers


def named(label: str) -> str:
    """'trial 12' for a searched trial's label '12'; other labels ('ref baby') as they are."""
    return f"trial {label}" if label.isdigit() else label


def facts(data: dict[str, Any]) -> str:
    """What was measured, where and how: device, study, dates, versions, budget, precision, trials."""
    env, s = data["environment"], data["settings"]
    limit = s.get("memory_limit_bytes")
    memory = env.get("gpu_memory_bytes")
    rows = [
        ["device", f"{env.get('device_name') or '-'} ({env.get('device') or '-'})"
                   + (f", {fmt('mib', memory, True)}" if memory else "")],
        ["CPU", f"{env.get('cpu') or '-'}, {env.get('cpu_threads') or '-'} thread(s) per trial"],
        ["study", f"{data['study']} ({data['folder']})"],
        ["trials ran", data["ran"]],
        ["card written", data["written"]],
        ["versions", f"torch {env.get('torch') or '-'}, optuna {data['optuna']}, python {env.get('python') or '-'}"],
        ["budget per trial", f"{s.get('budget') or '-'} of training"],
        ["precision", s.get("dtype") or "-"],
        ["objective", f"{s.get('objective') or '-'} (sampler {s.get('sampler') or '-'}, pruner "
                      f"{s.get('pruner') or '-'})"],
        ["memory limit", fmt("mib", limit, True) if limit else "none (the whole device)"],
        ["configurations tried", f"{len(data['trials'])} (" + ", ".join(f"{n} {k}" for k, n in data["counts"].items())
         + ")"],
    ]
    return '<section id="facts">' + table(None, rows, "facts") + "</section>"


def _crossover(data: dict[str, Any], rows: list[dict[str, Any]], cross: dict[str, Any]) -> str:
    if not any(str(r["device"]) != "cpu" for r in rows):
        where = data["environment"].get("device_name") or "the CPU"
        return (f"<p><b>Crossover:</b> no GPU in these measurements (the study ran on {esc(where)}): there is no "
                f"size from which a GPU beats the CPU to report.</p>")
    if not any(str(r["device"]) == "cpu" for r in rows):
        return ("<p><b>Crossover:</b> no CPU in these measurements: there is nothing to compare the GPU with, and "
                "no crossover to report.</p>")
    items = [f"<li>{esc(k)}: " + (f"the GPU beats the CPU from size <b>{esc(v)}</b> on" if v else
                                  "the GPU never beats the CPU at these sizes") + "</li>" for k, v in cross.items()]
    return "<p><b>Crossover</b> (the smallest size from which the GPU beats the CPU):</p><ul>" + "".join(items) + \
        "</ul>" if items else "<p><b>Crossover:</b> not in the file.</p>"


def matmul(data: dict[str, Any]) -> str:
    """GFLOP/s per dtype against size and the device's peak: plot, table, peaks, crossover, and the source."""
    m = data["matmul"]
    head = '<section id="matmul"><h2>Matrix multiplication: GFLOP/s against the peak</h2>'
    if m is None or m["missing"]:
        why = m["missing"] if m else "not measured"
        return f'{head}<p class="note">No matmul figures: {esc(why)}.</p><p class="source">source: ' \
               f'{esc(m["source"] if m else "-")}</p></section>'
    rows = [r for r in m["rows"] if isinstance(r.get("gflops"), (int, float))]
    parts = [head, f'<p class="source">source: {esc(m["source"])}</p>']
    if m["note"]:
        parts.append(f'<p class="note">Note: {esc(m["note"])}.</p>')
    parts.append(figure(matmul_plot(rows, m["peaks"]), "matmul",
                        "GFLOP/s per device, dtype and library against the matrix size; dashed: each device and "
                        "dtype's peak"))
    names = sorted({series_name(r) for r in rows})
    sizes = sorted({r["size"] for r in rows}, key=lambda z: edge(next(r for r in rows if r["size"] == z)))
    cells = {(series_name(r), r["size"]): r for r in rows}

    def cell(name: str, size: str) -> str:
        r = cells.get((name, size))
        if r is None:
            return "-"
        share = r.get("share_of_peak")
        return fmt("gflops", r["gflops"]) + (f" ({fmt('share', share, True)})" if share is not None else "")

    parts.append(table(["size", *[f"{n} GFLOP/s (share of peak)" for n in names]],
                       [[s, *[cell(n, s) for n in names]] for s in sizes], "matmul"))
    peaks = [f"<li>{esc(p.get('device'))} {esc(p.get('dtype'))}: "
             f"{esc(fmt('gflops', p.get('peak_gflops'), True))} ({esc(p.get('peak_source', 'source not given'))})"
             f"</li>" for p in m["peaks"]]
    parts.append("<p><b>Peaks</b> (what the share is of):</p><ul>" + "".join(peaks) + "</ul>" if peaks
                 else "<p>No peak in the file: shares of peak are not known.</p>")
    parts.append(_crossover(data, rows, m["crossover"]))
    return "".join(parts) + "</section>"


def best(data: dict[str, Any]) -> str:
    """The winning configuration: its six values and its figures."""
    w = data["winner"]
    head = '<section id="best"><h2>Best configuration</h2>'
    stopped = _stopped_references(data)
    if w is None:
        return head + "<p>No configuration trained to the target yet.</p>" + stopped + "</section>"
    confirmed = (f", confirmed: mean val loss {fmt('loss', w['confirmed_mean'])} over {w['confirmed_runs']} runs"
                 if w.get("confirmed_mean") is not None else "")
    params = data.get("params") or PARAMS
    header = ["trial", *params, "val loss at target", "k tokens/s", "peak MiB", "M params"]
    row = [w["label"], *[param_cell(p, w.get(p)) for p in params], fmt("loss", w["val_loss"]),
           fmt("ktok", w["tokens_per_s"]), fmt("mib", w["peak_memory_bytes"]), fmt("params", w["n_params"])]
    spec = data["settings"].get("model")
    train = f"python -m gptcore train --config {data['folder']}/best.json" + (f" --model {spec}" if spec else "")
    budget = data["settings"].get("budget") or "-"
    return (f"{head}<p>Best at the target ({esc(budget)}): <b>{esc(named(w['label']))}</b>{esc(confirmed)}.</p>"
            f"{table(header, [row], 'best')}<p>Train it again from scratch: <code>{esc(train)}</code></p>{stopped}"
            f"</section>")


def _stopped_references(data: dict[str, Any]) -> str:
    """The reference presets stopped at a rung, each with its verdict (predicted, not measured); '' when none."""
    items = [f"<li>{esc(r['label'])}: {esc(r['text'])}</li>" for r in data.get("stopped_references") or []]
    return ('<p class="note">Reference preset(s) stopped at a rung (they ran, and were judged there):</p><ul '
            f'class="stopped">{"".join(items)}</ul>') if items else ""


def curves(data: dict[str, Any]) -> str:
    """The winner's and the references' training curves, as summary.md's curves.png draws them."""
    from gptcore.curve import CurvePoint
    from tune.report.curves import RunCurve
    from tune.report.plots import curves_figure

    head = '<section id="curves"><h2>Training curves</h2>'
    c = data.get("curves") or {}
    runs = [RunCurve(r["name"], r["winner"], [CurvePoint(*p) for p in r["points"]]) for r in c.get("runs", [])]
    if not runs:
        why = "; ".join(c.get("notes") or []) or "no run has trained to the target yet"
        return f"{head}<p>No training curve to draw: {esc(why)}.</p></section>"
    _plt()  # the Agg backend, before the figure is made
    caption = ("Validation loss at each evaluation (markers) over the training loss (thin), for the winner and the "
               "references, against the study's budget")
    return head + figure(curves_figure(runs, {"budget_unit": c["budget_unit"]}), "curves", caption) + "</section>"


def frontier(data: dict[str, Any]) -> str:
    """The out-of-memory frontier: a table, or in words when nothing ran out of memory."""
    head = '<section id="frontier"><h2>Out-of-memory frontier</h2>'
    largest = fmt("mib", data["largest_peak_bytes"], True)
    if data["out_of_memory"] == 0:
        return (f'{head}<p data-oom="0">No configuration ran out of memory; the largest tried used {esc(largest)}.'
                f"</p></section>")
    rows = data["frontier"]
    header = list(rows[0]) if rows else []
    cells = [[fmt("int", v) if isinstance(v, float) else str(v) for v in r.values()] for r in rows]
    return (f'{head}<p data-oom="{data["out_of_memory"]}">{data["out_of_memory"]} configuration(s) ran out of memory '
            f"or were skipped as predicted to. Per model size, the largest batch x block that trained and the "
            f"smallest that did not (the largest that trained used {esc(largest)}):</p>"
            f"{table(header, cells, 'frontier')}</section>")


def param_cell(name: str, value: Any) -> str:
    """A searched value in a card's table: the six in their units, a field searched beside them as written."""
    return fmt(PARAM_KIND.get(name, "int"), value) if name in PARAMS else (schema.param_text(value) or "-")


def _status(t: dict[str, Any]) -> str:
    """A trial's status, and why it stopped at a rung where the search recorded it: 'pruned (prediction)'."""
    return f"{t['status']} ({t['stopped_by']})" if t["status"] == Status.PRUNED and t.get("stopped_by") else t["status"]


def _loss(t: dict[str, Any]) -> str:
    """The loss a trial reached: at the target, or at the rung it stopped at ('2.4100 at rung 1/3')."""
    rung, rungs = t.get("rung"), t.get("rungs")
    if t["status"] == Status.OK or rung is None or rungs is None or rung >= rungs:
        return fmt("loss", t["val_loss"])
    loss = t.get("rung_loss") if t.get("rung_loss") is not None else t["val_loss"]
    return f"{fmt('loss', loss)} at rung {int(rung)}/{int(rungs)}" if loss is not None else "-"


def _predicted(t: dict[str, Any]) -> str:
    """A trial's predicted loss at the target and its sd ('2.1000 ± 0.0400'); '-' when it carries none."""
    if t.get("predicted_loss") is None:
        return "-"
    sd = t.get("predicted_sd")
    return fmt("loss", t["predicted_loss"]) + (f" ± {fmt('loss', sd)}" if sd is not None else "")


def trials_table(trials: list[dict[str, Any]], params: list[str] | tuple[str, ...] = PARAMS) -> str:
    """Every configuration tried, with the figures the plots draw (`params`: the searched parameters); the predicted
    loss at the target beside the loss when the search predicted one."""
    extra = [p for p in params if p not in PARAMS]
    predicted = any(t.get("predicted_loss") is not None for t in trials)
    header = ["trial", "status", "val loss", *(["predicted at target"] if predicted else []), "k tokens/s",
              "peak MiB", "M params", "batch", "block", "embed", "heads", "layers", "lr", *extra, "flags"]
    rows = [[t["label"], _status(t), _loss(t), *([_predicted(t)] if predicted else []), fmt("ktok", t["tokens_per_s"]),
             fmt("mib", t["peak_memory_bytes"]), fmt("params", t["n_params"]),
             *[param_cell(p, t.get(p)) for p in (*PARAMS, *extra)], ", ".join(t["flags"])] for t in trials]
    flagged = [t["label"] for t in trials if t["flags"]]
    note = (f'<p class="note">{len(flagged)} of {len(trials)} configurations are flagged: "contended" (other '
            f"processes competed for the device: its tokens/s, and with a time budget its loss, understate the "
            f'configuration) or "short" (too few steps to say much). summary.md has the details.</p>'
            if flagged else "")
    return note + table(header, rows, "trials")


def loss(data: dict[str, Any]) -> str:
    """Loss against throughput, memory as colour; the table of every configuration tried."""
    head = '<section id="loss"><h2>Loss vs throughput vs memory</h2>'
    ok = [t for t in data["trials"] if t["status"] == Status.OK and t["val_loss"] is not None
          and t["tokens_per_s"] is not None]
    winner = data["winner"]["label"] if data["winner"] else None
    plot = (figure(loss_plot(ok, winner), "loss", "Validation loss at the target against training throughput; "
                   "colour: peak memory; labels: trial numbers (ref: a reference preset)") if ok
            else "<p>No trial trained to the target: nothing to plot.</p>")
    tried = trials_table(data["trials"], data.get("params") or PARAMS)
    return f"{head}{plot}<p>Every configuration tried:</p>{tried}</section>"


def size(data: dict[str, Any]) -> str:
    """Throughput against model size (parameters)."""
    head = '<section id="size"><h2>Throughput against model size</h2>'
    ran = [t for t in data["trials"] if t["tokens_per_s"] is not None and t["n_params"]]
    if not ran:
        return head + "<p>No trial measured its throughput: nothing to plot.</p></section>"
    return head + figure(size_plot(ran), "size", "Training throughput against the number of parameters, every "
                         "trial that measured it (pruned ones too)") + "</section>"


SECTIONS: list[Callable[[dict[str, Any]], str]] = [facts, matmul, best, curves, frontier, loss, size]
