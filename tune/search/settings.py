"""Everything `python -m tune` was asked to do: one frozen TuneSettings of five argument groups, as litgpt groups
its arguments (what is searched, the training each configuration gets, where trials run, where the study lives,
what is kept and printed). The CLI builds it once (tune.__main__.settings_from_args); the whole search side reads it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from gptcore.corpus import DEFAULT_CORPUS
from tune.core.budget import Budget
from tune.core.studyfile import StudyFile
from tune.search.strategy import DEFAULT_PRUNER, DEFAULT_SAMPLER

# --confirm: the best this many configurations train CONFIRM_RUNS more times with fresh seeds once the study is
# done, and the winner is the best mean. The lead sets the final value from measurements.
# Measured on 9 real 20-trial studies (12 s target, 2-core CPU): the confirmed winner differed from the single-run
# winner in 1 of 9 with K = 2 and in the same 1 of 9 with K = 3 (and never can with K = 1); the top configurations
# were within noise of each other in 6 of 9 (run-to-run sd 0.030 median). K = 2 buys that for 4 target budgets.
DEFAULT_CONFIRM = 2
# --confirm-rule (tune.core.confirm.CONFIRM_RULES): sequential confirms the best once and goes on only while its lead
# is within the noise. In the replay (100 held-out seeds, 20 trials, 12 s table) it spent 2 target budgets less
# than confirming all 4 runs, for the same regret (docs/tuner-strategies.md, "Half the time").
DEFAULT_CONFIRM_RULE = "sequential"
# --keep-models: the trained models a study keeps besides best-model/. 3 covers the default --confirm 2 (its top 2
# keep their models through confirmation) and one runner-up to compare with, and bounds the disk to 4 models
# (best-model/ included) whatever --trials: an 8-trial study of tiny models kept 91 MB without a bound.
DEFAULT_KEEP_MODELS = 3


@dataclass(frozen=True)
class SearchArgs:
    """What is searched, on which corpus, and how the search proposes, ranks and confirms configurations."""

    trials: int = 50
    data: Path = DEFAULT_CORPUS
    space: str = "auto"
    space_overrides: dict[str, Any] = field(default_factory=dict)
    objective: str = "loss"
    pruner: str = DEFAULT_PRUNER  # tune.search.strategy: chosen by the replay benchmark
    sampler: str = DEFAULT_SAMPLER
    seed: int = 0
    references: tuple[str, ...] | None = None  # presets run after the search; None: REFERENCES for the device
    warm_start: str | None = None  # an earlier study (folder, trials.csv or name) whose best configurations go first
    confirm: int = DEFAULT_CONFIRM  # the best K configurations re-run with fresh seeds at the end; 0: none
    confirm_rule: str = DEFAULT_CONFIRM_RULE  # stop confirming once the answer is settled, or run all (CONFIRM_RULES)
    # --param: fields searched beside the six, {name: the space file's form} (tune.core.fields), over --space
    space_params: dict[str, Any] = field(default_factory=dict)
    model: str = ""  # --model: the user's model class, FILE.py:Class or package.module:Class ("": gptcore's GPT)


@dataclass(frozen=True)
class TrainingArgs:
    """The training and evaluation every configuration gets: the target budget, its rungs, schedule and windows."""

    budget: Budget | None = None  # the training the user means to run; None: DEFAULT_BUDGET for the device
    rungs: int | None = None  # None: as many as fit, up to 4 (the smallest >= 4 s or 50 steps)
    reduction_factor: int = 3
    schedule: str = "cosine"  # the learning rate against the target budget
    # Validation: the same 4 x 32 windows for every trial and every evaluation, val split only (the train
    # loss is the mean training loss): evaluation stays a few percent of a trial.
    eval_iters: int = 4
    eval_batch_size: int = 32


@dataclass(frozen=True)
class ExecArgs:
    """Where and how each trial's process runs: device, precision, memory, workers, timeouts and liveness."""

    device: str = "auto"
    dtype: str = "auto"
    compile: str = "auto"  # gptcore.config.TrainConfig.compile of every trial (auto: each trial decides)
    memory_limit: int | None = None
    predict: bool = True  # skip a configuration predicted over the memory limit (False: trace and record only)
    trial_timeout: float | None = None
    workers: int | None = 1  # parallel trials in this tuner process; None: one per GPU (one on a CPU)
    gpus: tuple[int, ...] | None = None  # CUDA indices the workers may use; None: every visible GPU
    cores: tuple[int, ...] | None = None  # CPU cores the workers share out; None: every core this process may use
    heartbeat_interval: int = 10  # seconds between a running trial's liveness records
    grace_period: int = 60  # a running trial without a record for this long is stale: failed, queued again
    max_time: float | None = None  # --max-time: seconds after which this tuner starts no new run; None: no cap


@dataclass(frozen=True)
class StoreArgs:
    """Where the study lives and where its results go."""

    study_name: str | None = None
    storage: str | None = None  # an Optuna storage URL (may carry a password: never printed)
    results: Path = Path("results")


@dataclass(frozen=True)
class OutputArgs:
    """What the study keeps and prints."""

    save_models: bool = True  # trials that reach the target keep their checkpoint
    keep_models: int = DEFAULT_KEEP_MODELS  # only the best this many checkpoints stay (tune.report.keep)
    progress: bool = True
    quiet: bool = False  # only warnings, errors and the final lines (tune.exec.console)
    log_to: tuple[str, ...] = ()  # trackers every run is logged to: tensorboard, mlflow (tune.report.tracking)


@dataclass(frozen=True)
class TuneSettings:
    """Everything `python -m tune` was asked to do, in five groups."""

    search: SearchArgs = field(default_factory=SearchArgs)
    training: TrainingArgs = field(default_factory=TrainingArgs)
    execution: ExecArgs = field(default_factory=ExecArgs)
    store: StoreArgs = field(default_factory=StoreArgs)
    output: OutputArgs = field(default_factory=OutputArgs)
    study_file: StudyFile | None = None  # --config: recorded with the invocation (its values are in the groups)

    @classmethod
    def of(cls, **flat: Any) -> TuneSettings:
        """Settings from flat field names (trials=4, device="cpu", ...), each sent to its group."""
        unknown = sorted(set(flat) - set(_GROUP_OF))
        if unknown:
            raise TypeError(f"TuneSettings.of: unknown setting(s) {', '.join(unknown)}; expected names from "
                            f"{', '.join(_GROUP_OF)}")
        return cls(**{group: kind(**{k: v for k, v in flat.items() if _GROUP_OF[k] == group})
                      for group, kind in _GROUPS.items()})

    def flat(self) -> dict[str, Any]:
        """Every setting by its flat name (the names the flags and TuneSettings.of use)."""
        return {name: getattr(getattr(self, group), name) for name, group in _GROUP_OF.items()}

    # Flat read-only names still read by tune.search.study (another module's refactor is under way there):
    # each is the one field of its group, never a copy.
    @property
    def trials(self) -> int:
        return self.search.trials

    @property
    def objective(self) -> str:
        return self.search.objective

    @property
    def seed(self) -> int:
        return self.search.seed

    @property
    def confirm(self) -> int:
        return self.search.confirm

    @property
    def memory_limit(self) -> int | None:
        return self.execution.memory_limit

    @property
    def predict(self) -> bool:
        return self.execution.predict

    @property
    def heartbeat_interval(self) -> int:
        return self.execution.heartbeat_interval

    @property
    def grace_period(self) -> int:
        return self.execution.grace_period

    @property
    def save_models(self) -> bool:
        return self.output.save_models

    @property
    def progress(self) -> bool:
        return self.output.progress

    @property
    def quiet(self) -> bool:
        return self.output.quiet


# Each group's attribute on TuneSettings, and the group each flat name lives in.
_GROUPS = {"search": SearchArgs, "training": TrainingArgs, "execution": ExecArgs, "store": StoreArgs,
           "output": OutputArgs}
_GROUP_OF = {f.name: group for group, kind in _GROUPS.items() for f in fields(kind)}
