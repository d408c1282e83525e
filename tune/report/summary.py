"""summary.md: a study read top to bottom: what was run, the verdict, the top 10, the OOM frontier, how well the
rungs and the learning-curve prediction foretold the target, how far the figures can be trusted, the search space,
the environment, the plots and what trials.csv's columns mean."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from tune.core import schema, trust, units
from tune.core.budget import format_seconds
from tune.core.epochs import MANY_EPOCHS
from tune.core.outcomes import COUNTED, OUT_OF_MEMORY, Status
from tune.core.provenance import invocations
from tune.core.space import Space
from tune.report.frame import (
    Winner,
    best_row,
    choose_winner,
    extra_params,
    label,
    markdown_table,
    objective_key,
    oom_frontier,
    originals,
    readable,
    reference_of,
    source_of,
    time_span,
    within_noise,
)
from tune.report.keep import disk_used, kept_models
from tune.report.memreport import memory_section
from tune.report.predicted import (
    INTERVAL_Z,
    has_prediction,
    judged_text,
    prediction_errors,
    stop_counts,
    stopped_by_prediction,
    verdict_at_rung,
)

PLOTS = ("curves.png", "rungs.png", "history.png", "importances.png", "loss_vs_memory.png", "throughput_vs_memory.png",
         "memory.png")


def summary_markdown(study: optuna.Study, df: pd.DataFrame, folder: Path, notes: list[str] | None = None) -> str:
    """summary.md, top to bottom: what was run, the verdict, top 10, OOM frontier, confirmation, rungs, the
    learning-curve prediction (when the search made one), memory, measurement, warm start, search space, environment,
    plots, columns."""
    env = study.user_attrs.get("environment", {})
    settings = study.user_attrs.get("settings", {})
    objective = settings.get("objective", "loss")
    runs = originals(df)
    winner = choose_winner(df, settings)
    what = "validation loss" if objective == "loss" else "training throughput"
    lines = [f"# Study `{study.study_name}`", "",
             f"Which GPT configuration trains best in **{settings.get('budget', '?')}** on **"
             f"{env.get('device_name', '?')}** ({settings.get('dtype', '?')}), judged by {what}.", ""]
    lines += run_section(study, df, settings, env)
    lines[-1:-1] = [disk_line(folder, settings)]  # the last line of "What was run"
    lines += verdict_section(winner, df, settings, folder)
    lines += answer_so_far(runs, settings, winner)
    lines += warnings_about(winner, df, study)
    ok = runs[runs["status"] == Status.OK]
    if not ok.empty:
        key, lower = objective_key(objective)
        top = ok.sort_values(key, ascending=lower)
        lines += ["## Top 10 at the target", "", "Searched trials that trained to the target, and the references "
                  "(one run each: the confirmation runs are in their own section).",
                  "", markdown_table(readable(top.head(10))), ""]
    lines += frontier_section(runs)
    lines += confirmation_section(winner, objective)
    rungs = settings.get("rungs") or [1.0]
    lines += rung_section(runs[runs["reference"].isna()], len(rungs))
    lines += prediction_section(runs, settings)
    lines += memory_section(runs, settings, label)
    lines += measurement_section(study, df)
    lines += warm_start_section(study, runs, objective)
    space = settings.get("space")
    if space:
        lines += ["## Search space", "", Space.from_dict(space).describe(), ""]
    lines += environment_section(env)
    # The plots that were drawn, and why any other was not (too few trials, nothing predicted).
    lines += ["## Plots", "", *(f"![{p}]({p})" for p in PLOTS if (folder / p).exists()), ""]
    if (folder / "curves.png").exists():
        lines += ["Every run's training curve is in `logs/<run>.curve.csv` (trial_0003, ref_baby, ...): a point "
                  "each time its training losses were read back, with the validation loss at its evaluations.", ""]
    lines += [*(f"- {n}" for n in notes or []), ""] if notes else []
    lines += ["## trials.csv", "", "One row per run (searched trials, references, confirmation runs); sizes in "
              "MiB, times in seconds.", "", *schema.glossary(extra_params(df)), ""]
    return "\n".join(lines)


def _v(key: str, value: float) -> str:
    """A figure of the objective's column (val_loss, tokens_per_s) as every report rounds it."""
    return units.figure(key, value)


def _name(key: str) -> str:
    """The objective's figure as every line of the report names it: 'validation loss', 'training tokens/s'."""
    return schema.label(key)


def _range(key: str, row: pd.Series) -> str:
    """A confirmed configuration's min..max."""
    return f"{_v(key, row['min'])}..{_v(key, row['max'])}"


def run_section(study: optuna.Study, df: pd.DataFrame, settings: dict[str, Any], env: dict[str, Any]) -> list[str]:
    """What was run: the commands, when, how long, with which versions; trials asked and counted; the target."""
    lines = ["## What was run", ""]
    calls = invocations(study)
    for call in calls:
        started = str(call.get("started", "?")).replace("T", " ").removesuffix("+00:00")
        lines.append(f"- `{call.get('command')}` (started {started} UTC"
                     f"{' on ' + call['host'] if call.get('host') else ''})")
    span = time_span(study)
    if span is not None:
        lines.append(f"- trials ran from {span.text()}: {format_seconds(span.seconds)} of wall time, "
                     f"{format_seconds(float(df['trial_seconds'].fillna(0).sum()))} inside trials")
        lines.append(time_split(df, settings, span.seconds))
    versions = calls[-1].get("versions", {}) if calls else {}
    shown = {"gptcore-tune": versions.get("gptcore-tune"), "torch": env.get("torch") or versions.get("torch"),
             "Optuna": versions.get("optuna") or optuna.__version__,
             "Python": env.get("python") or versions.get("python")}
    lines.append("- versions: " + ", ".join(f"{k} {v}" for k, v in shown.items() if v))
    runs = originals(df)
    search = runs[runs["reference"].isna()]
    counts = search["status"].value_counts().reindex([s.value for s in Status], fill_value=0)
    counted = counted_trials(runs)
    retries = int(search["retry_of"].notna().sum())
    refs = runs[runs["reference"].notna()]
    repeats = len(df) - len(runs)
    # Counted: outcomes of the configuration. Errors and interruptions say nothing about it: queued again once.
    outcome = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s in COUNTED)
    others = ", ".join(f"{n} {s}" for s, n in counts.items() if n and s not in COUNTED)
    lines.append(f"- trials: {settings.get('trials', counted)} asked, {counted} counted ({outcome or 'none yet'})"
                 f"{f'; not counted: {others}' if others else ''}"
                 f"{f', {retries} retried with the same parameters' if retries else ''}"
                 f"; {_references(refs)}; {repeats} confirmation run(s)")
    objective = settings.get("objective", "loss")
    meaning = "validation loss, lower is better" if objective == "loss" else "training tokens/s, higher is better"
    limit = settings.get("memory_limit_bytes")
    corpus = study.user_attrs.get("corpus_tokens") or {}
    size = (f": {corpus['train']:,} training and {corpus.get('val', 0):,} validation tokens"
            if corpus.get("train") else "")
    rungs = settings.get("rungs") or [1.0]
    if len(rungs) > 1:
        rung_line = (f"- rungs at {', '.join(f'{f:.3g}' for f in rungs)} of the target (reduction factor "
                     f"{settings.get('reduction_factor')}, pruner {settings.get('pruner')}): only the best 1/"
                     f"{settings.get('reduction_factor')} at a rung train on")
    else:  # nothing to prune between: every trial trains to the target
        rung_line = "- one rung, the target itself: every trial trains to the target (nothing is pruned)"
    lines += [f"- target: **{settings.get('budget')}** of training per configuration (evaluation excluded); the "
              f"winner is the best *at that budget*",
              f"- objective: **{objective}** ({meaning}), validation on {settings.get('eval_iters')} batches of "
              f"{settings.get('eval_batch_size')} windows, the same for every trial",
              f"{rung_line}; learning-rate schedule **{settings.get('schedule')}** to the target, the same in every "
              f"trial and in best.json",
              f"- precision {settings.get('dtype')}, compile {settings.get('compile', 'auto')}, sampler "
              f"{settings.get('sampler')}, seed {settings.get('seed')}, "
              f"memory limit {units.MIB.text(limit, True) if limit else 'none (the whole device)'}",
              f"- corpus {settings.get('corpus')}{size}", ""]
    return lines


def disk_line(folder: Path, settings: dict[str, Any]) -> str:
    """What the study's folder takes on disk, and how much of it is kept models (--keep-models)."""
    models = kept_models(folder)
    keep = settings.get("keep_models")
    rule = ("--no-save-models: none kept" if settings.get("save_models") is False
            else f"--keep-models {keep}: the best {keep} and best-model/" if keep is not None
            else "every model that trained to the target")
    return (f"- disk: the study's folder holds {disk_used(folder) / units.MiB:,.1f} MiB, "
            f"{sum(models.values()) / units.MiB:,.1f} MiB of it in {len(models)} model folder(s) ({rule})")


def _references(refs: pd.DataFrame) -> str:
    """'2 reference preset(s)', with its runs when a preset ran more than once (retried after an interruption), and
    the presets judged at a rung by the prediction (they ran, and were stopped there)."""
    presets = refs["reference"].nunique()
    judged = sorted({r["reference"] for _, r in refs.iterrows() if stopped_by_prediction(r)})
    stopped = (f", {len(judged)} of them stopped at a rung by the prediction ({', '.join(judged)})" if judged
               else "")
    if len(refs) == presets:
        return f"{presets} reference preset(s){stopped}"
    outcomes = ", ".join(f"{n} {s}" for s, n in refs["status"].value_counts().items())
    return f"{presets} reference preset(s) in {len(refs)} runs ({outcomes}){stopped}"


# What a run that did not train to the target was doing, when it recorded no error.
UNFINISHED = {"queued": "queued, not run (the study stopped first)", "running": "still running",
              "interrupted": "interrupted before it recorded a result"}


def _not_ok(row: pd.Series) -> str:
    """Why a run has no value: its status and error, in words."""
    error = row.get("error")
    if isinstance(error, str) and error:
        return f"{row['status']} ({error})"
    return UNFINISHED.get(row["status"], f"{row['status']} (no value)")


def warnings_about(winner: Winner | None, df: pd.DataFrame, study: optuna.Study) -> list[str]:
    """What to keep in mind about the verdict: many epochs of a small corpus; top configurations within noise."""
    if winner is None:
        return []
    out = []
    epochs = winner.row.get("epochs")
    if pd.notna(epochs) and epochs >= MANY_EPOCHS:
        corpus = study.user_attrs.get("corpus_tokens") or {}
        out.append(f"- **warning**: the winner saw its corpus's training split {epochs:,.0f} times "
                   f"({corpus.get('train', 0):,} tokens). On a corpus this small the best configuration at this "
                   f"budget may be the best at memorising it; tune on a larger corpus (`--data`) for the "
                   f"training you will run.")
    if winner.line is not None:
        noise = within_noise(winner)
        if not noise.empty:
            out.append(f"- **warning**: {len(noise)} other confirmed configuration(s) are within noise of the "
                       f"winner (their range of runs overlaps its own): see Confirmation.")
    elif study.user_attrs.get("settings", {}).get("confirm", 1) == 0:
        out.append("- chosen from one run per configuration (`--confirm 0`): a close second may be as good.")
    return [*out, ""] if out else []


def frontier_section(runs: pd.DataFrame) -> list[str]:
    """The OOM frontier: a table per model size where something ran out of memory, else one sentence."""
    lines = ["## Out-of-memory frontier", ""]
    out_of_memory = runs["status"].isin(OUT_OF_MEMORY)
    if not out_of_memory.any():
        ran = runs.dropna(subset=["peak_memory_bytes"])
        if ran.empty:
            return [*lines, "No configuration ran out of memory, and none measured its peak yet.", ""]
        big = ran.loc[ran["peak_memory_bytes"].idxmax()]
        return [*lines, f"No configuration ran out of memory; the largest tried used "
                f"{units.MIB.text(big['peak_memory_bytes'], True)} ({source_of(big)}: batch {int(big['batch_size'])} x "
                f"block {int(big['block_size'])}, {int(big['n_layer'])} layers of width {int(big['n_embed'])}).",
                ""]
    frontier = oom_frontier(runs)
    return [*lines, "Per model size, the largest batch x block that trained, the smallest that ran out of memory, "
            "and the smallest skipped as predicted out of memory (the predicted boundary: memory.png draws it).",
            "", markdown_table(frontier), ""]


def environment_section(env: dict[str, Any]) -> list[str]:
    """The machine, in units a person reads."""
    rows = [("device", f"{env.get('device_name', '?')} ({env.get('device', '?')})")]
    if env.get("cpu") and env["cpu"] != env.get("device_name"):
        rows.append(("CPU", str(env["cpu"])))
    if env.get("cpu_threads"):
        cores = env.get("cores")
        rows.append(("torch threads per trial", f"{env['cpu_threads']}" + (f" (cores {', '.join(map(str, cores))})"
                                                                           if cores else "")))
    if env.get("gpu_memory_bytes"):
        rows.append(("GPU memory", units.GIB.text(env['gpu_memory_bytes'], True)))
    if env.get("gpu_count"):
        rows.append(("GPUs", f"{env['gpu_count']}: {', '.join(str(g) for g in env.get('gpus') or [])}"))
    if env.get("vm_data_bytes"):
        rows.append(("a trial process before its model (data segment)", units.MIB.text(env['vm_data_bytes'], True)))
    if "bf16_supported" in env:
        rows.append(("bfloat16 supported", "yes" if env["bf16_supported"] else "no"))
    return ["## Environment", "", "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in rows), ""]


def time_split(df: pd.DataFrame, settings: dict[str, Any], wall: float) -> str:
    """Where the study's time went, by kind of run, in seconds and (for a time target) in target budgets: what a
    study costs, and what the searched trials' share of it is."""
    seconds = df["trial_seconds"].fillna(0).astype(float)
    confirm = df["confirm_of"].notna() if "confirm_of" in df else pd.Series(False, index=df.index)
    ran = df["trial_seconds"].notna()  # a queued run, or one still running, has spent nothing on record yet
    ref = df["reference"].notna() & ~confirm & ran
    search = ~df["reference"].notna() & ~confirm & ran
    confirm = confirm & ran
    parts = [("trial(s) that reached the target", search & (df["status"] == Status.OK)),
             ("pruned trial(s)", search & (df["status"] == Status.PRUNED)),
             ("trial(s) that failed or were cut short", search & ~df["status"].isin([Status.OK, Status.PRUNED])),
             ("run(s) of reference presets", ref), ("confirmation run(s)", confirm)]
    target = settings.get("budget_amount") if settings.get("budget_unit") == "s" else None

    def amount(t: float) -> str:
        return format_seconds(t) + (f" ({t / target:.1f} target budgets)" if target else "")

    said = [f"{amount(float(seconds[mask].sum()))} in {int(mask.sum())} {what}" for what, mask in parts if mask.any()]
    outside = wall - float(seconds.sum())  # negative with parallel workers: their trials overlap
    rest = f"; {format_seconds(outside)} between runs (the tuner's own work)" if outside > 0 else ""
    total = f" of {amount(wall)}" if target else ""
    return f"- where the time went{total}: {', '.join(said) or 'no run yet'}{rest}"


def counted_trials(runs: pd.DataFrame) -> int:
    """Searched trials whose outcome counts toward --trials (references and confirmation runs do not)."""
    return int(runs.loc[runs["reference"].isna(), "status"].isin(COUNTED).sum())


def answer_so_far(runs: pd.DataFrame, settings: dict[str, Any], winner: Winner | None) -> list[str]:
    """What the verdict still lacks while the study is unfinished (stopped, or still running); [] once complete."""
    counted, asked = counted_trials(runs), int(settings.get("trials") or 0)
    missing = [f"{counted} of {asked} trials counted"] if counted < asked else []
    done_refs = set(runs.loc[runs["reference"].notna() & runs["status"].isin(COUNTED), "reference"])
    refs = [r for r in settings.get("references") or [] if r not in done_refs]
    missing += [f"reference(s) {', '.join(refs)} not run"] if refs else []
    if winner is not None and settings.get("confirm") and winner.line is None:
        missing.append("the winner unconfirmed (its figure is one run's)")
    running = int((runs["status"] == Status.RUNNING).sum())
    missing += [f"{running} run(s) still running"] if running else []
    if not missing:
        return []
    return [f"**The answer so far**: {'; '.join(missing)}. best.json and best-model/ hold this answer and are "
            f"rewritten as runs finish; running the same command again resumes the study.", ""]


def verdict_section(winner: Winner | None, df: pd.DataFrame, settings: dict[str, Any], folder: Path) -> list[str]:
    """The winner at the target, and by how much it beats each reference preset (or that it does not): by their
    means over their runs where their confirmation completed, else by their single runs; a preset stopped at a rung
    by its predicted loss at the target."""
    if winner is None:
        return ["## Verdict", "", "No configuration trained to the target yet.", ""]
    objective = settings.get("objective", "loss")
    best = winner.row
    key, lower = objective_key(objective)
    name = f"the `{reference_of(best)}` preset (a reference)" if reference_of(best) else f"trial {int(best['number'])}"
    score, what = _figure(winner, best, key)
    over = f" over {int(winner.line['n'])} runs (see Confirmation)" if winner.line is not None else ""
    shape = (f"batch {int(best['batch_size'])} x block {int(best['block_size'])}, {int(best['n_layer'])} layer(s) of "
             f"width {int(best['n_embed'])} with {int(best['n_head'])} head(s), learning rate "
             f"{units.LR.text(best['learning_rate'])}"
             + "".join(f", {p} {schema.param_text(best[p])}" for p in extra_params(df))
             + (f", {units.PARAMS.text(best['n_params'])} M parameters" if pd.notna(best.get("n_params")) else ""))
    lines = ["## Verdict", "", f"Best at the target: **{name}**, {what} {_v(key, score)}{over}: {shape}.", ""]
    tried = originals(df)
    refs = tried[tried["reference"].notna()]
    # One line per preset: the run that trained to the target, else its latest (a retry after an interruption).
    refs = refs.assign(_ok=refs["status"] == Status.OK).sort_values("_ok", kind="stable").groupby("reference").tail(1)
    for _, ref in refs.sort_index().iterrows():
        if ref["status"] == Status.PRUNED:  # it ran, and was judged at a rung
            judged = verdict_at_rung(ref, settings, score, key == "val_loss")
            lines.append(f"- reference `{ref['reference']}`: {judged}")
            continue
        if ref["status"] != Status.OK:
            lines.append(f"- reference `{ref['reference']}`: {_not_ok(ref)}")
            continue
        value, its = _figure(winner, ref, key)
        gain = (value - score) if lower else (score - value)
        if ref["reference"] == best["reference"]:
            lines.append(f"- reference `{ref['reference']}` ({its} {_v(key, value)}) is the winner: no searched "
                         f"configuration beat it at this budget")
        else:
            lines.append(f"- beats reference `{ref['reference']}` ({its} {_v(key, value)}) by {_v(key, gain)} "
                         f"({units.ERROR.text(gain / abs(value))})" if gain > 0 else
                         f"- does not beat reference `{ref['reference']}` ({its} {_v(key, value)})")
    config = best.get("config")
    spec = config["model"].get("model") if isinstance(config, dict) else None
    named = f" --model {spec}" if spec else ""  # a class of the user's own runs only when named (gptcore.usermodel)
    lines += ["", markdown_table(readable(best.to_frame().T)), "",
              f"Train it from scratch, the same way and for the same budget: "
              f"`python -m gptcore train --config {folder / 'best.json'}{named}`.",
              f"Or use the model it trained in the study: `python -m gptcore sample --checkpoint "
              f"{folder / 'best-model'}{named}` (continue it with `train --out {folder / 'best-model'} --resume"
              f"{named}`).", ""]
    return lines


def _figure(winner: Winner, row: pd.Series, key: str) -> tuple[float, str]:
    """What the verdict compares for a configuration, and its name: its mean where its confirmation completed,
    else its single run's figure."""
    t = winner.table
    if not t.empty:
        hit = t[(t["configuration"] == source_of(row)) & (t["state"] == "complete")]
        if not hit.empty:
            return float(hit.iloc[0]["mean"]), f"mean {_name(key)}"
    return float(row[key]), _name(key)


def confirmation_section(winner: Winner | None, objective: str) -> list[str]:
    """The confirmed configurations (runs, mean ± sd, min..max), whether the mean changed the winner, and whether
    the top configurations are within noise of each other."""
    if winner is None or winner.table.empty:
        return []
    key, _ = objective_key(objective)
    t = winner.table
    extra = int(t["runs"].max()) - 1
    lines = ["## Confirmation", "",
             f"The best configurations that trained to the target were trained {extra} more time(s) each with fresh "
             f"seeds, to the full target and never pruned. A configuration's figure is its mean {_name(key)} over its "
             f"runs (the original run and the confirmation runs); one with a run that did not train to the target "
             f"(an error, divergence, out of memory, a timeout) cannot win on the runs that happened to succeed.", "",
             f"| configuration | runs that trained to the target | mean ± sd of {_name(key)} | min..max | |",
             "| --- | --- | --- | --- | --- |"]
    for _, r in t.iterrows():
        runs = f"{int(r['n'])} of {int(r['runs'])}" + (f" ({r['failed']})" if r["failed"] else "")
        runs += f", {int(r['pending'])} pending" if r["pending"] else ""
        sd = f" ± {_v(key, r['sd'])}" if pd.notna(r["sd"]) else ""
        note = ("**winner**" if winner.line is not None and r["configuration"] == winner.line["configuration"]
                else "cannot win: a run failed" if r["state"] == "failed"
                else "not judged yet" if r["state"] == "pending" else "")
        lines.append(f"| {r['configuration']} | {runs} | {_v(key, r['mean'])}{sd} | {_range(key, r)} | "
                     f"{note} |")
    lines.append("")
    single, single_name = winner.single, source_of(winner.single)
    if winner.line is None:
        row = winner.row
        if row.name == single.name:
            lines.append(f"No confirmed configuration has trained to the target in every run yet: the winner is the "
                         f"single-run winner, {single_name} ({_name(key)} {_v(key, single[key])} in one run), "
                         f"unconfirmed.")
        else:
            lines.append(f"No confirmed configuration has trained to the target in every run: the winner is the best "
                         f"single run of a configuration that did not fail one, {source_of(row)} ({_name(key)} "
                         f"{_v(key, row[key])}), unconfirmed; the single-run winner, {single_name}, failed a "
                         f"confirmation run.")
        return [*lines, ""]
    line = winner.line
    if winner.row.name == single.name:
        lines.append(f"The confirmed winner is also the single-run winner: **{line['configuration']}**.")
    else:
        lines.append(f"The confirmed winner, **{line['configuration']}** (mean {_v(key, line['mean'])}), is not the "
                     f"single-run winner, {single_name} ({_name(key)} {_v(key, single[key])} in one run): that run "
                     f"was partly luck.")
    noise = within_noise(winner)
    if not noise.empty:
        others = ", ".join(f"{r['configuration']} ({_range(key, r)})" for _, r in noise.iterrows())
        lines.append(f"The winner's range over its runs ({_range(key, line)}) overlaps that of "
                     f"{others}: the top configurations are within noise of each other at this budget, and the "
                     f"differences between their means are not to be trusted. Choose among them on other grounds "
                     f"(speed, memory), or confirm with more runs.")
    else:
        rest = t[(t["state"] == "complete") & (t["configuration"] != line["configuration"])]
        if not rest.empty:
            r = rest.iloc[0]
            lines.append(f"The winner's range ({_range(key, line)}) does not overlap the runner-up's, "
                         f"{r['configuration']} ({_range(key, r)}): its lead held in every run.")
    return [*lines, ""]


def rung_section(search: pd.DataFrame, n_rungs: int) -> list[str]:
    """How many trials reached each rung, and how well each rung's loss predicted the loss at the target."""
    lines = ["## Rungs", "", "| rung | trials that reached it | rank correlation with the loss at the target |",
             "| --- | --- | --- |"]
    finished = search[search["status"] == Status.OK]
    for k in range(1, n_rungs + 1):
        reached = int((search["rung"] >= k).sum())
        col = f"loss_rung_{k}"
        rho = "-"
        if k < n_rungs and col in finished and finished[col].notna().sum() >= 4:
            pairs = finished[[col, "val_loss"]].dropna()
            rho = f"{spearman(pairs[col], pairs['val_loss']):.2f} over {len(pairs)} trials"
        lines.append(f"| {k} | {reached} | {rho} |")
    return [*lines, "", "Rank correlation (Spearman) is measured over the trials that trained to the target: 1.00 "
            "means the rung ordered them exactly as the target did.", ""]


def prediction_section(runs: pd.DataFrame, settings: dict[str, Any]) -> list[str]:
    """How well the learning-curve prediction did (only when some run carries one): the error of the runs that then
    reached the target, the searched trials stopped by halving and by the prediction, the references it stopped."""
    predicted = runs[[has_prediction(r) for _, r in runs.iterrows()]]
    if predicted.empty:
        return []
    lines = ["## Learning-curve prediction", "",
             "At a rung below the target, the search predicted a run's validation loss at the target from a straight "
             "line through the study's own (loss at that rung, loss at the target) pairs, with the sd of that "
             "prediction, and stopped a run whose prediction, read optimistically, could not beat the best loss at "
             "the target so far. The runs that then trained to the target measure how good the line was "
             "(error: validation loss at the target - predicted).", ""]
    errors = prediction_errors(runs)
    if errors.empty:
        lines.append("- no run reached the target after a prediction yet: the line's error is not measured")
    else:
        worst = errors.loc[errors["error"].abs().idxmax()]
        sd = f" ± {units.LOSS.text(worst['sd'])}" if pd.notna(worst["sd"]) else ""
        lines.append(f"- {len(errors)} run(s) reached the target after a prediction: median absolute error "
                     f"{units.LOSS.text(errors['error'].abs().median())}, {int(errors['within'].sum())} of "
                     f"{len(errors)} within ±{INTERVAL_Z} sd of their prediction; the worst miss: "
                     f"{worst['run']}, predicted {units.LOSS.text(worst['predicted'])}{sd}, reached "
                     f"{units.LOSS.text(worst['val_loss'])} ({units.LOSS.text(worst['error'], sign=True)})")
    counts = stop_counts(runs[runs["reference"].isna()])
    unrecorded = f", {counts['unrecorded']} without a recorded reason" if counts["unrecorded"] else ""
    lines.append(f"- searched trials stopped before the target: {counts['halving']} by successive halving, "
                 f"{counts['prediction']} by the prediction{unrecorded}")
    refs = runs[runs["reference"].notna()]
    judged = [f"`{r['reference']}` ({judged_text(r, settings, None)})" for _, r in refs.iterrows()
              if stopped_by_prediction(r)]
    if judged:
        lines.append(f"- reference(s) stopped by the prediction: {'; '.join(judged)}")
    return [*lines, ""]


def spearman(a: pd.Series, b: pd.Series) -> float:
    """Spearman's rank correlation: Pearson's on the ranks (no SciPy needed)."""
    return float(a.rank().corr(b.rank()))


def measurement_section(study: optuna.Study, df: pd.DataFrame) -> list[str]:
    """How far the figures can be trusted: contention at the start and per trial, budgets too short."""
    lines = ["## Measurement", ""]
    busy = study.user_attrs.get("busy_cores_at_start")
    if busy is not None:
        state = "busy" if busy > 0.5 else "quiet"
        lines.append(f"- before the first trial other processes kept {busy:.2f} cores busy ({state})")
    ran = df[df["cpu_share"].notna()]
    if not ran.empty:
        lines.append(f"- CPU share each trial got of what its threads could use: median "
                     f"{ran['cpu_share'].median():.0%}, lowest {ran['cpu_share'].min():.0%} (threads per trial: "
                     f"{', '.join(str(int(t)) for t in sorted(ran['threads'].dropna().unique()))})")
    compile_s = df.get("compile_seconds", pd.Series(0.0, index=df.index)).fillna(0)
    total = df["train_seconds"].fillna(0) + df["eval_seconds"].fillna(0) + df["warmup_seconds"].fillna(0) + compile_s
    lines.append(f"- time inside trials: {df['train_seconds'].sum():,.0f} s timed training, "
                 f"{df['warmup_seconds'].sum():,.0f} s warm-up steps, {compile_s.sum():,.0f} s compiling, "
                 f"{df['eval_seconds'].sum():,.0f} s evaluation, "
                 f"of {df['trial_seconds'].sum():,.0f} s of trial wall time ({total.sum():,.0f} s accounted)")
    warnings = trust.study_warnings({label(r): r.dropna().to_dict() for _, r in df.iterrows()})
    lines += [f"- **warning**: {w}" for w in warnings] or ["- no trial was contended or had too short a budget"]
    flagged = df[df["contended"].notna() | df["budget_warning"].notna()]
    if not flagged.empty:
        lines += ["", "| trial | status | contended | budget |", "| --- | --- | --- | --- |"]
        lines += [f"| {label(r)} | {r['status']} | {r['contended'] if pd.notna(r['contended']) else ''} | "
                  f"{r['budget_warning'] if pd.notna(r['budget_warning']) else ''} |" for _, r in flagged.iterrows()]
    return [*lines, ""]


def warm_start_section(study: optuna.Study, df: pd.DataFrame, objective: str) -> list[str]:
    """Where the study was warm-started from (tune.search.warmstart), and its warm-start trials against the sampled
    ones."""
    warm = study.user_attrs.get("warm_start")
    if not warm:
        return []
    key = "val_loss" if objective == "loss" else "tokens_per_s"
    search = df[df["reference"].isna()]
    started, sampled = search[search["warm_start"].notna()], search[search["warm_start"].isna()]
    skipped = [f", {len(warm[k])} {what}" for k, what in (("outside", "outside this search space skipped"),
                                                          ("over_trials", "beyond --trials left out")) if warm.get(k)]
    lines = ["## Warm start", "",
             f"Warm-started from `{warm['given']}` ({warm['source']}): its best configurations that trained to the "
             f"target, ranked by its objective ({warm['objective']}); {len(warm['enqueued'])} enqueued as this "
             f"study's first trials{''.join(skipped)}.", ""]
    best_warm, best_sampled = best_row(started, objective), best_row(sampled, objective)
    for what, best in (("warm-start", best_warm), ("sampled", best_sampled)):
        source = f" ({best['warm_start']})" if best is not None and pd.notna(best["warm_start"]) else ""
        lines.append(f"- best {what} trial: " + (f"{int(best['number'])}{source}, {_name(key)} {_v(key, best[key])}"
                                                  if best is not None else "none trained to the target"))
    if best_warm is not None and best_sampled is not None:
        gain = best_warm[key] - best_sampled[key] if objective == "loss" else best_sampled[key] - best_warm[key]
        share = units.ERROR.text(gain / abs(best_warm[key]))
        lines.append(f"- the sampler improved on the warm start by {_v(key, gain)} ({share})"
                     if gain > 0 else "- no sampled trial beat the warm start")
    return [*lines, "", markdown_table(readable(started)), ""]


