"""Which trained models a study keeps on disk (--keep-models K): the best K, plus best-model/, plus whatever a
configuration still being confirmed needs; the rest are pruned while the study runs.

A trial that trains to the full target saves its model under checkpoints/<label> (trial_0012, ref_baby). Every
tuner on the study prunes after each trial it records, and once more when the study is over and best-model/ has
been copied. The rules, safe with any number of tuners and workers on one study:
- a checkpoint is pruned only when its run is finished in the storage and no attempt of the same label is still
  running or queued (a reference's retry writes the same folder), so a model being written is never touched;
- while the study is not over the best max(K, --confirm, 1) stay: the configurations confirmation will re-run,
  and the current best (best-model/ is copied from it at the end, even with K = 0);
- the best-model/ copy and every pruning decision hold one lock (an flock beside the checkpoints), so a tuner never
  renames a checkpoint another is copying;
- a pruned checkpoint is first renamed to a trash name (`.pruned.<label>.<pid>`: no checkpoint loader and no
  atomic-write recovery reads that name), then deleted. A kill -9 in between leaves the checkpoint gone, never
  half there; the next prune deletes the trash.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from gptcore.files import fault_point
from tune.core.confirm import run_stem

TRASH_PREFIX = ".pruned."
LOCK_NAME = ".keep.lock"
UNFINISHED = (TrialState.RUNNING, TrialState.WAITING)


@contextlib.contextmanager
def checkpoints_lock(folder: Path) -> Iterator[None]:
    """Hold the study folder's checkpoint lock (an flock: freed by the kernel when the process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing drops the flock


def label_of(trial: FrozenTrial, reference: bool) -> str | None:
    """The folder name a run's checkpoint has (tune.search.study.job_for): trial_0012 or ref_baby; None: unknown."""
    if not reference:
        return run_stem(trial.number, None)
    preset = trial.user_attrs.get("reference")
    return run_stem(None, preset) if preset else None


def ranked(study: optuna.Study, refs: optuna.Study | None) -> list[str]:
    """Labels of the runs that trained to the target (searched trials and references), best objective first."""
    sign = 1 if study.direction == StudyDirection.MINIMIZE else -1
    found = []
    for s, reference in ((study, False), (refs, True)):
        for t in s.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if s is not None else ():
            label = label_of(t, reference)
            if label is not None and t.value is not None and math.isfinite(t.value):
                found.append((sign * t.value, label))
    return [label for _, label in sorted(found)]


def prunable(study: optuna.Study, refs: optuna.Study | None, keep: int) -> list[str]:
    """Labels whose checkpoint may go: finished runs outside the best `keep`, none with an attempt still to come."""
    kept = set(ranked(study, refs)[:keep])
    finished, busy = set(), set()
    for s, reference in ((study, False), (refs, True)):
        for t in s.get_trials(deepcopy=False) if s is not None else ():
            label = label_of(t, reference)
            if label is not None:
                (busy if t.state in UNFINISHED else finished).add(label)
    return sorted(finished - busy - kept)


def prune(folder: Path, study: optuna.Study, refs: optuna.Study | None, keep: int) -> list[str]:
    """Delete the checkpoints under folder/checkpoints outside the best `keep` runs; the labels pruned."""
    root = folder / "checkpoints"
    if not root.is_dir():
        return []
    pruned = []
    with checkpoints_lock(folder):
        for label in prunable(study, refs, keep):
            if os.path.lexists(root / label):
                _to_trash(root, label)
                pruned.append(label)
    empty_trash(root)  # outside the lock: the trash is invisible to every reader already
    return pruned


def _to_trash(root: Path, label: str) -> None:
    """Rename a checkpoint to a trash name (atomic: afterwards it is gone for every reader)."""
    with contextlib.suppress(FileNotFoundError):  # another tuner pruned it a moment ago
        os.replace(root / label, root / f"{TRASH_PREFIX}{label}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
    fault_point("keep:renamed")


def empty_trash(root: Path) -> None:
    """Delete every trash folder under `root` (left by a prune, a killed one's included)."""
    with contextlib.suppress(FileNotFoundError):
        for entry in os.listdir(root):
            if entry.startswith(TRASH_PREFIX):
                shutil.rmtree(root / entry, ignore_errors=True)


def holds(best_model: Path, row: Any) -> bool:
    """Whether best-model/ already holds the model of `row` (its checkpoint's label and loss), e.g. after the
    winner's own checkpoint was pruned."""
    src = row.get("checkpoint")
    try:
        tuner = json.loads((best_model / "state.json").read_text(encoding="utf-8")).get("tuner") or {}
        log, loss, want = Path(str(tuner.get("log"))).stem, float(tuner.get("val_loss")), float(row.get("val_loss"))
    except (OSError, ValueError, TypeError, AttributeError):
        return False
    return isinstance(src, str) and log == Path(src).name and math.isclose(loss, want)


def kept_models(folder: Path) -> dict[str, int]:
    """The model folders a study's folder holds (checkpoints/<label> and best-model/), with their bytes."""
    root = folder / "checkpoints"
    found = [root / e for e in sorted(os.listdir(root)) if not e.startswith(".")] if root.is_dir() else []
    found += [folder / "best-model"] if (folder / "best-model").is_dir() else []
    return {str(p.relative_to(folder)): disk_used(p) for p in found if p.is_dir() and not p.is_symlink()}


def disk_used(folder: Path) -> int:
    """Bytes the files under `folder` take (links not followed)."""
    total = 0
    for base, _, names in os.walk(folder):
        for name in names:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(base, name)).st_size
    return total
