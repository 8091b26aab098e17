"""A run report: plots and a markdown summary of a finished (or interrupted) training run, read from its folder.

[`write_report`] reads the Trainer's log history (`trainer_state.json`, written by `trainer.save_state()`, else the
one of the last complete checkpoint) and, for a [`ZPDTrainer`] run, the curriculum record (`zpd_curriculum.parquet`),
and writes into `<run_dir>/zpd_report/`:

| file | content |
|---|---|
| `learning_curve.png` | training loss and evaluation loss by step, and the evaluation metrics |
| `ppl_band.png` | per epoch: the scored PPL, the level D, the running PPL and the band `[band_lower, band_upper]` |
| `zone_fraction.png` | per epoch: the fraction of the pool inside the band, and the zone's size split into in-band and widened |
| `difficulty_histograms.png` | per scored epoch: the pool's difficulty, the selected examples and the band |
| `hit_rate.png` | per epoch: the zone detector's hit rate and the loss drops behind it |
| `report.md` | the run's settings, one row per epoch, the final evaluation, and links to the plots |

A run of the plain `Trainer` gets the learning curve and the per-epoch evaluations only. Plots are drawn with the
object-oriented matplotlib API (no `pyplot`, so no global backend state), and every file is written through a
temporary file and an atomic rename.

Epochs count from 0, as in the trainer. The zone of epoch e is chosen (and logged) at the end of epoch e - 1, before
epoch e trains; the evaluation "after epoch e" is the one the Trainer logs at epoch e + 1.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter, PercentFormatter
from transformers.trainer import TRAINER_STATE_NAME

from .curriculum import atomic_write_bytes
from .record import RECORD_NAME, CurriculumRecord
from .trainer import last_complete_checkpoint

REPORT_DIR_NAME = "zpd_report"
REPORT_NAME = "report.md"
LEARNING_CURVE = "learning_curve.png"
PPL_BAND = "ppl_band.png"
ZONE_FRACTION = "zone_fraction.png"
DIFFICULTY_HISTOGRAMS = "difficulty_histograms.png"
HIT_RATE = "hit_rate.png"
PLOT_NAMES = (LEARNING_CURVE, PPL_BAND, ZONE_FRACTION, DIFFICULTY_HISTOGRAMS, HIT_RATE)
# Beyond this many scored epochs the histogram grid becomes unreadable: evenly spaced epochs are drawn instead.
MAX_HISTOGRAM_PANELS = 12
DPI = 100
MISSING = "—"
# Evaluation keys that measure speed, not the model: left out of the tables and plots.
_SPEED_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")
# The training logs' keys, which also appear (as `epoch`, `step`) in every other entry.
_BOOKKEEPING = ("epoch", "step")
# The record's per-row columns that hold the epoch's level and band edges.
_BAND_COLUMNS = ("level", "band_lower", "band_upper")


class ReportError(ValueError):
    """The run folder cannot be reported on: the message names the folder (or file) and what is missing."""


@dataclass
class RunData:
    """What [`load_run`] read from a run folder.

    Args:
        run_dir (`str`): the run folder.
        state_path (`str`): the `trainer_state.json` the log history came from.
        state (`dict[str, Any]`): its content (`log_history`, `global_step`, `max_steps`, `epoch`, ...).
        record (`CurriculumRecord`, *optional*): the curriculum record; `None` for a plain `Trainer` run.
        record_path (`str`, *optional*): the file the record was read from.
        notes (`list[str]`): what the reader had to work around (a damaged or stale `trainer_state.json`).
    """

    run_dir: str
    state_path: str
    state: dict[str, Any]
    record: CurriculumRecord | None = None
    record_path: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def log_history(self) -> list[dict[str, Any]]:
        return self.state["log_history"]


@dataclass
class EpochRow:
    """One row of the per-epoch table: what epoch `epoch` trained on, its zone's metrics and the eval after it."""

    epoch: int
    trained_on: str
    zone_metrics: dict[str, float]
    evaluation: dict[str, float] | None
    eval_epoch: float | None


# ---- reading a run ----


def _read_state(path: str) -> dict[str, Any]:
    """A `trainer_state.json`'s content; `ReportError` if it is unreadable or has no `log_history` list."""
    try:
        with open(path) as handle:
            state = json.load(handle)
    except (OSError, ValueError) as error:
        raise ReportError(f"{path} is unreadable ({type(error).__name__}: {error}).") from error
    if not isinstance(state, dict) or not isinstance(state.get("log_history"), list):
        raise ReportError(f"{path} has no 'log_history' list: it is not a Trainer state file.")
    return state


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Reads a run folder's log history and curriculum record.

    The log history is the folder's own `trainer_state.json` (written by `trainer.save_state()`), unless it is
    missing, damaged, or behind the last complete `checkpoint-N` folder (a run resumed after its last `save_state()`);
    then it is the checkpoint's. The record is the one beside that `trainer_state.json`, else the run folder's, else
    the last complete checkpoint's.

    Args:
        run_dir (`str` or `os.PathLike`): a run's `output_dir`, or one checkpoint folder.

    Returns:
        [`RunData`]

    Raises:
        [`ReportError`]: the folder does not exist, or holds neither a readable `trainer_state.json` nor a complete
            checkpoint, or its curriculum record is damaged.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise ReportError(f"No run folder at {run_dir}: no such folder.")
    notes: list[str] = []
    root_path = os.path.join(run_dir, TRAINER_STATE_NAME)
    root_state, root_error = None, None
    if os.path.isfile(root_path):
        try:
            root_state = _read_state(root_path)
        except ReportError as error:
            root_error = error
    checkpoint = last_complete_checkpoint(run_dir)
    checkpoint_path = os.path.join(checkpoint, TRAINER_STATE_NAME) if checkpoint is not None else None
    checkpoint_state = None
    if checkpoint_path is not None:
        try:
            checkpoint_state = _read_state(checkpoint_path)
        except ReportError:  # readable JSON (last_complete_checkpoint checked) but not a state file: ignore it
            checkpoint_state = None

    if root_state is None and checkpoint_state is None:
        if root_error is not None:
            raise ReportError(
                f"{root_error} The run folder {run_dir} has no complete checkpoint to fall back on: call "
                "trainer.save_state() again, or keep a checkpoint (save_strategy other than 'no')."
            ) from root_error
        raise ReportError(
            f"Nothing to report in {run_dir}: it has no {TRAINER_STATE_NAME} and no complete checkpoint-N folder. "
            "Call trainer.save_state() at the end of training (it writes the log history), or keep a checkpoint "
            "(save_strategy other than 'no'), or pass the run's output_dir."
        )
    if root_state is not None and checkpoint_state is not None:
        # A root state older than the last checkpoint comes from a save_state() before a resumed run went further.
        if checkpoint_state.get("global_step", 0) > root_state.get("global_step", 0):
            notes.append(
                f"`{TRAINER_STATE_NAME}` of the run folder stops at step {root_state.get('global_step')}, the "
                f"checkpoint `{os.path.basename(checkpoint)}` goes to step {checkpoint_state.get('global_step')}: "
                "the report uses the checkpoint's log history."
            )
            root_state = None
    if root_state is not None:
        state_path, state = root_path, root_state
    else:
        state_path, state = checkpoint_path, checkpoint_state
        if root_error is not None:
            notes.append(f"{root_error} The report uses the last complete checkpoint's log history instead.")
        elif not os.path.isfile(root_path):
            notes.append(
                f"The run folder has no `{TRAINER_STATE_NAME}` (no trainer.save_state(), or the run was "
                f"interrupted): the report uses the last complete checkpoint, `{os.path.basename(checkpoint)}`."
            )

    record_path = None
    candidates = [os.path.dirname(state_path), run_dir, checkpoint]
    for folder in candidates:
        if folder is not None and os.path.isfile(os.path.join(folder, RECORD_NAME)):
            record_path = os.path.join(folder, RECORD_NAME)
            break
    record = None
    if record_path is not None:
        try:
            record = CurriculumRecord.load(record_path)
        except ValueError as error:
            raise ReportError(str(error)) from error
    return RunData(run_dir, state_path, state, record, record_path, notes)


# ---- the numbers behind the report ----


def format_number(value: Any, percent: bool = False) -> str:
    """How the report writes a number: 4 significant digits, integers without a decimal point, and `—` for a
    missing, NaN or infinite value.

    Args:
        value (`Any`): the number (or `None`).
        percent (`bool`, *optional*, defaults to `False`): write a fraction as a percentage with one decimal.
    """
    if isinstance(value, bool) or value is None:
        return MISSING if value is None else str(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(number):
        return MISSING
    if percent:
        return f"{number:.1%}"
    if number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return f"{number:.4g}"


def _is_finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def zone_metrics(run: RunData) -> dict[int, dict[str, float]]:
    """Epoch -> the `zpd/*` metrics logged when its zone was chosen.

    The log history wins; the record fills in epochs the log lacks (a replayed curriculum, whose zones are not chosen
    by this run, or a log cut short).
    """
    metrics: dict[int, dict[str, float]] = {}
    if run.record is not None:
        metrics = {epoch: dict(values) for epoch, values in run.record.epoch_metrics.items()}
    for entry in run.log_history:
        if _is_finite(entry.get("zpd/epoch")):
            epoch = int(round(entry["zpd/epoch"]))
            # A later entry for the same epoch (a resumed run choosing it again) replaces the earlier one.
            metrics[epoch] = {key: value for key, value in entry.items() if key.startswith("zpd/")}
    return dict(sorted(metrics.items()))


def _is_eval_metric(key: str) -> bool:
    return key.startswith("eval_") and not key.endswith(_SPEED_SUFFIXES)


def evaluations(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations in log order, one dict per evaluated step (several eval datasets log one entry each)."""
    by_step: dict[Any, dict[str, Any]] = {}
    for entry in log_history:
        if any(_is_eval_metric(key) for key in entry):
            merged = by_step.setdefault(entry.get("step"), {})
            merged.update({key: value for key, value in entry.items() if _is_eval_metric(key) or key in _BOOKKEEPING})
    return list(by_step.values())


def eval_metric_names(log_history: Sequence[dict[str, Any]]) -> list[str]:
    """Every evaluation metric logged, losses first, each group in order of first appearance."""
    names = list(dict.fromkeys(key for entry in evaluations(log_history) for key in entry if _is_eval_metric(key)))
    return [name for name in names if name.endswith("loss")] + [name for name in names if not name.endswith("loss")]


def _eval_after_epochs(log_history: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Epoch e -> the evaluation nearest to the end of epoch e (Trainer epoch e + 1), among those that round to it."""
    chosen: dict[int, dict[str, Any]] = {}
    for evaluation in evaluations(log_history):
        if not _is_finite(evaluation.get("epoch")):
            continue
        # Round half up, so that each evaluation belongs to one epoch end; the nearest one wins, ties the later.
        end = math.floor(evaluation["epoch"] + 0.5)
        previous = chosen.get(end - 1)
        if previous is None or abs(evaluation["epoch"] - end) <= abs(previous["epoch"] - end):
            chosen[end - 1] = evaluation
    return {epoch: evaluation for epoch, evaluation in chosen.items() if epoch >= 0}


def trained_epochs(run: RunData) -> float:
    """How far training went, in epochs (fractional for a run stopped mid-epoch)."""
    epochs = [entry["epoch"] for entry in run.log_history if _is_finite(entry.get("epoch"))]
    if _is_finite(run.state.get("epoch")):
        epochs.append(run.state["epoch"])
    return max(epochs, default=0.0)


def epoch_rows(run: RunData) -> list[EpochRow]:
    """One row per epoch that trained (or whose zone was chosen), in order."""
    metrics = zone_metrics(run)
    record = run.record
    zones = set(record.zones) if record is not None else set()
    # Without a record, a logged zone still says that the epoch drew from one.
    zones |= set(metrics)
    reached = trained_epochs(run)
    num_epochs = math.ceil(reached - 1e-6)
    after = _eval_after_epochs(run.log_history)
    settings = record.settings if record is not None else {}
    rows = []
    for epoch in sorted(set(range(num_epochs)) | zones):
        values = metrics.get(epoch, {})
        if epoch in zones:
            boundary = record.history.scored_at.get(epoch) if record is not None else None
            if boundary is not None and boundary != epoch:
                trained_on = f"zone (scores of epoch {boundary})"
            elif values.get("zpd/rescored") == 0:
                trained_on = "zone (latest scores)"
            else:
                trained_on = "zone"
            if settings.get("replay_fraction"):
                trained_on += f" + {settings['replay_fraction']:.0%} replay"
        else:
            trained_on = "whole training set"
        if epoch >= num_epochs:
            trained_on += " (chosen, not trained)"
        elif epoch + 1 > reached + 1e-6:
            trained_on += f" (stopped at epoch {reached:.2f})"
        evaluation = after.get(epoch)
        eval_epoch = evaluation["epoch"] if evaluation is not None else None
        rows.append(EpochRow(epoch, trained_on, values, evaluation, eval_epoch))
    return rows


# ---- plots ----


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _series(entries: Iterable[dict[str, Any]], x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The finite (x, y) pairs of the entries that carry both keys."""
    pairs = [(e[x_key], e[y_key]) for e in entries if _is_finite(e.get(x_key)) and _is_finite(e.get(y_key))]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*pairs, strict=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def _legend(axes) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small")


def _epoch_axis(axes, epochs: Iterable[float]) -> None:
    """Integer epoch ticks, with room around the first and last epoch (a single epoch would get a 0.2-wide axis)."""
    epochs = sorted({float(epoch) for epoch in epochs})
    if not epochs:
        return
    axes.set_xlim(epochs[0] - 0.6, epochs[-1] + 0.6)
    if len(epochs) <= 20:
        axes.set_xticks(epochs, [format_number(epoch) for epoch in epochs])
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))


def _difficulty_axis(axes, low: float, high: float) -> None:
    """A log axis for difficulties; over less than a decade, a few plainly written ticks instead of 3.4x10^1."""
    axes.set_xscale("log")
    if high / low < 10:
        axes.xaxis.set_major_locator(MaxNLocator(nbins=5))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())


def plot_learning_curve(log_history: Sequence[dict[str, Any]]) -> bytes | None:
    """Training loss and evaluation losses by step, and the other evaluation metrics in a second panel; `None` when
    nothing was logged."""
    train_steps, train_loss = _series(log_history, "step", "loss")
    names = eval_metric_names(log_history)
    evals = evaluations(log_history)
    losses = [name for name in names if name.endswith("loss")]
    others = [name for name in names if not name.endswith("loss")]
    if train_loss.size == 0 and not evals:
        return None
    figure = Figure(figsize=(8, 7 if others else 4.5), layout="constrained")
    axes = figure.subplots(2 if others else 1, 1, sharex=True, squeeze=False)[:, 0]
    loss_axes = axes[0]
    if train_loss.size:
        loss_axes.plot(train_steps, train_loss, label="train loss", linewidth=1.2)
    for name in losses:
        steps, values = _series(evals, "step", name)
        loss_axes.plot(steps, values, marker="o", label=name.replace("_", " "))
    loss_axes.set_ylabel("loss")
    loss_axes.set_title("Learning curve")
    loss_axes.grid(alpha=0.3)
    _legend(loss_axes)
    if others:
        metric_axes = axes[1]
        for name in others:
            steps, values = _series(evals, "step", name)
            metric_axes.plot(steps, values, marker="o", label=name.replace("_", " "))
        metric_axes.set_ylabel("evaluation metric")
        metric_axes.grid(alpha=0.3)
        _legend(metric_axes)
    axes[-1].set_xlabel("step")
    return _png(figure)


def _zone_series(metrics: dict[int, dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    return _series(({"epoch": epoch, **values} for epoch, values in metrics.items()), "epoch", key)


def plot_ppl_band(metrics: dict[int, dict[str, float]], log_history: Sequence[dict[str, Any]]) -> bytes | None:
    """Per epoch, the scored PPL, the level D, the running PPL and the band; `None` without zone metrics."""
    # The band's epochs are those with both edges finite, so that the two edges line up.
    band = {
        e: v for e, v in metrics.items() if _is_finite(v.get("zpd/band_lower")) and _is_finite(v.get("zpd/band_upper"))
    }
    epochs, lower = _zone_series(band, "zpd/band_lower")
    _, upper = _zone_series(band, "zpd/band_upper")
    ppl_epochs, ppl = _zone_series(metrics, "zpd/ppl")
    level_epochs, level = _zone_series(metrics, "zpd/level")
    if not (epochs.size or ppl.size or level.size):
        return None
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if epochs.size:
        # One bar per epoch: the band is chosen once per epoch, so a bar (unlike a filled line) shows a single zone.
        axes.bar(epochs, upper - lower, bottom=lower, width=0.5, alpha=0.25, color="tab:green", label="band")
    axes.plot(ppl_epochs, ppl, marker="o", label="scored PPL (zpd/ppl)")
    axes.plot(level_epochs, level, marker="s", label="level D (zpd/level)")
    running_epochs, running = _zone_series(metrics, "zpd/running_ppl")
    axes.plot(running_epochs, running, marker="^", linestyle="--", label="running PPL at the choice")
    # The running PPL of the training logs, for context between the epoch boundaries. The zone of epoch e is chosen
    # at the end of epoch e - 1, i.e. at Trainer epoch e, which is the x of its markers.
    train = [entry for entry in log_history if "loss" in entry]
    steps_epochs, steps_running = _series(train, "epoch", "zpd/running_ppl")
    if steps_running.size:
        axes.plot(steps_epochs, steps_running, color="grey", alpha=0.5, linewidth=1, label="running PPL (training)")
    values = np.concatenate([lower, upper, ppl, level, running, steps_running])
    values = values[values > 0]
    if values.size and values.max() / values.min() > 20:  # PPL falls by orders of magnitude early on
        axes.set_yscale("log")
    axes.set_xlabel("epoch (the zone is chosen when the previous epoch ends)")
    axes.set_ylabel("perplexity / difficulty")
    axes.set_title("Scored PPL, level and ZPD band")
    _epoch_axis(axes, [*epochs, *ppl_epochs, *level_epochs])
    if steps_running.size:  # the training curve starts before the first zone
        axes.set_xlim(min(axes.get_xlim()[0], float(steps_epochs.min())), max(axes.get_xlim()[1], steps_epochs.max()))
    axes.grid(alpha=0.3)
    _legend(axes)
    return _png(figure)


def plot_zone_fraction(metrics: dict[int, dict[str, float]]) -> bytes | None:
    """Per epoch, the fraction of the pool in the band, and the zone's size split into in-band and widened."""
    epochs, fraction = _zone_series(metrics, "zpd/zone_fraction")
    size_epochs, selected = _zone_series(metrics, "zpd/num_selected")
    if not (fraction.size or selected.size):
        return None
    widened = np.asarray([metrics[int(e)].get("zpd/num_widened", 0.0) for e in size_epochs], dtype=np.float64)
    widened = np.nan_to_num(widened)
    figure = Figure(figsize=(8, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    bars = top.bar(epochs, fraction, width=0.6, color="tab:green")
    top.bar_label(bars, labels=[format_number(value, percent=True) for value in fraction], fontsize="small")
    # A zone fraction of 0 (every example widened) is common early on: keep the axis at 0 so that it reads as 0.
    top.set_ylim(0.0, max(float(fraction.max(initial=0.0)) * 1.2, 0.1))
    top.yaxis.set_major_formatter(PercentFormatter(1.0))
    top.set_ylabel("pool inside the band")
    top.set_title("Zone fraction (before widening) and zone size")
    top.grid(alpha=0.3)
    bottom.bar(size_epochs, selected - widened, width=0.6, color="tab:green", label="in the band")
    bottom.bar(size_epochs, widened, width=0.6, bottom=selected - widened, color="tab:orange", label="widened")
    bottom.set_ylabel("examples in the zone")
    bottom.set_xlabel("epoch")
    bottom.grid(alpha=0.3)
    _epoch_axis(bottom, [*epochs, *size_epochs])
    _legend(bottom)
    return _png(figure)


def _histogram_epochs(record: CurriculumRecord) -> list[int]:
    """The epochs whose zone has scores behind it (a resumed run may have zones without)."""
    return [epoch for epoch in sorted(record.zones) if record.history.table_for(epoch) is not None]


def plot_difficulty_histograms(record: CurriculumRecord, epochs: Sequence[int]) -> bytes | None:
    """One panel per epoch: the pool's difficulty (selected examples stacked on top), the band and the level D."""
    if not epochs:
        return None
    columns = min(len(epochs), 3)
    rows = math.ceil(len(epochs) / columns)
    figure = Figure(figsize=(4.3 * columns, 3.4 * rows), layout="constrained")
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes in grid.flat[len(epochs) :]:
        axes.set_visible(False)
    for axes, epoch in zip(grid.flat, epochs, strict=False):
        data = record.epoch_rows(epoch)
        difficulty, selected = data["difficulty"], data["selected"].astype(bool)
        finite = np.isfinite(difficulty) & (difficulty > 0)
        level, lower, upper = (float(data[name][0]) if data[name].size else math.nan for name in _BAND_COLUMNS)
        edges = [value for value in (lower, upper) if math.isfinite(value) and value > 0]
        span = np.concatenate([difficulty[finite], edges])
        if span.size == 0:
            axes.text(0.5, 0.5, "no finite difficulty", ha="center", va="center", transform=axes.transAxes)
        else:
            low, high = float(span.min()), float(span.max())
            if high <= low * 1.0001:
                low, high = low * 0.95, high * 1.05
            # Log-spaced bins on a log axis: the band [lower D, upper D] is multiplicative, so it keeps its width.
            bins = np.geomspace(low, high, int(np.clip(np.sqrt(finite.sum()), 8, 50)) + 1)
            axes.hist(
                [difficulty[finite & ~selected], difficulty[finite & selected]],
                bins=bins,
                stacked=True,
                color=["tab:blue", "tab:orange"],
                label=["not selected", "selected"],
            )
            _difficulty_axis(axes, low, high)
            if len(edges) == 2:
                axes.axvspan(lower, upper, color="tab:green", alpha=0.2, label="band")
            if math.isfinite(level):
                axes.axvline(level, color="black", linestyle="--", linewidth=1, label="level D")
        boundary = record.history.scored_at.get(epoch)
        suffix = f" (scores of epoch {boundary})" if boundary not in (None, epoch) else ""
        axes.set_title(f"epoch {epoch}{suffix}", fontsize="medium")
        axes.set_xlabel("difficulty (effective perplexity)")
        axes.set_ylabel("examples")
    _legend(grid.flat[0])
    figure.suptitle("Pool difficulty per epoch, with the ZPD band")
    return _png(figure)


def plot_hit_rate(metrics: dict[int, dict[str, float]]) -> bytes | None:
    """Per epoch, the hit rate (NaN skipped) and the loss drops of the zone and of the rest; `None` if no epoch has
    a finite hit rate."""
    epochs, hit_rate = _zone_series(metrics, "zpd/hit_rate")
    if hit_rate.size == 0:
        return None
    drop_epochs, selected_drop = _zone_series(metrics, "zpd/selected_loss_drop")
    other_epochs, other_drop = _zone_series(metrics, "zpd/other_loss_drop")
    has_drops = bool(selected_drop.size or other_drop.size)
    figure = Figure(figsize=(8, 6 if has_drops else 4), layout="constrained")
    axes = figure.subplots(2 if has_drops else 1, 1, sharex=True, squeeze=False)[:, 0]
    axes[0].plot(epochs, hit_rate, marker="o", color="tab:purple")
    axes[0].set_ylim(-0.05, 1.05)
    axes[0].yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0].set_ylabel("previous zone's loss fell\nmore than the rest's mean")
    axes[0].set_title("Zone detector hit rate")
    axes[0].grid(alpha=0.3)
    if has_drops:
        axes[1].plot(drop_epochs, selected_drop, marker="o", label="previous zone")
        axes[1].plot(other_epochs, other_drop, marker="s", label="rest of the pool")
        axes[1].axhline(0.0, color="black", linewidth=0.8)
        axes[1].set_ylabel("mean loss drop since the last pass")
        axes[1].grid(alpha=0.3)
        _legend(axes[1])
    axes[-1].set_xlabel("epoch (whose zone choice measured the drop)")
    _epoch_axis(axes[-1], [*epochs, *drop_epochs, *other_epochs])
    return _png(figure)


# ---- markdown ----


def _cell(value: Any) -> str:
    text = format_number(value) if not isinstance(value, str) else value
    # A pipe would split the table's cell; a newline would end the row.
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(_cell(name) for name in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return lines


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(item) for item in value)
    if isinstance(value, float):
        return format_number(value)
    return MISSING if value is None else str(value)


def band_cell(values: dict[str, float]) -> str:
    """The band as the per-epoch table writes it: `[lower, upper]`, or `—` without a zone."""
    if "zpd/band_lower" not in values and "zpd/band_upper" not in values:
        return MISSING
    return f"[{format_number(values.get('zpd/band_lower'))}, {format_number(values.get('zpd/band_upper'))}]"


def _render_markdown(
    run: RunData,
    rows: list[EpochRow],
    metrics: dict[int, dict[str, float]],
    plots: dict[str, str],
    notes: list[str],
) -> str:
    state, record = run.state, run.record
    title = os.path.basename(os.path.normpath(os.path.abspath(run.run_dir)))
    lines = [f"# Training run report: {title}", ""]
    lines.append(f"- Run folder: `{run.run_dir}`")
    lines.append(f"- Log history: `{os.path.relpath(run.state_path, run.run_dir)}`")
    step, max_steps = state.get("global_step"), state.get("max_steps")
    # A checkpoint saved at the last step is written before the Trainer logs its summary (`train_runtime`).
    finished = any("train_runtime" in entry for entry in run.log_history) or (
        _is_finite(step) and _is_finite(max_steps) and 0 < max_steps <= step
    )
    reached = trained_epochs(run)
    progress = f"step {format_number(step)} of {format_number(max_steps)}, epoch {reached:.2f}"
    if finished:
        lines.append(f"- Training finished: {progress}.")
    else:
        lines.append(f"- Training did not finish in this log (interrupted, or still running): {progress}.")
    if record is not None:
        lines.append(f"- Curriculum record: `{os.path.relpath(run.record_path, run.run_dir)}`")
    else:
        lines.append("")
        what = (
            "the zone plots come from the logged `zpd/*` metrics, and there are no difficulty histograms."
            if metrics
            else "the report shows the learning curve and the evaluations only."
        )
        lines.append(
            f"**No curriculum record**: neither the run folder nor its last checkpoint holds a `{RECORD_NAME}`. "
            f"This is a run of the plain `Trainer` (or its record was removed), so {what}"
        )
    lines.append("")

    if record is not None:
        lines += ["## Curriculum settings", ""]
        lines += _table(["setting", "value"], [(name, _setting(value)) for name, value in record.settings.items()])
        if record.settings.get("replayed_from"):
            notes.append(
                f"This run replayed the curriculum `{record.settings['replayed_from']}`: its zones, PPLs and bands "
                "are those of the recorded run (no scoring pass ran here)."
            )
        lines.append("")

    lines += ["## Epochs", ""]
    lines.append(
        "Epochs count from 0. The zone of epoch e is chosen (and logged) when epoch e - 1 ends, before epoch e trains: "
        "its scored PPL, level D and band are those of that scoring pass. The evaluation columns are the evaluation "
        "after epoch e (Trainer epoch e + 1)."
    )
    lines.append("")
    eval_names = eval_metric_names(run.log_history)
    header = ["epoch", "trained on"]
    has_zones = any(metrics.get(row.epoch) for row in rows)
    if has_zones:
        header += ["scored PPL", "level D", "band", "zone fraction", "selected", "widened", "hit rate"]
    header += eval_names
    table_rows = []
    for row in rows:
        values = row.zone_metrics
        cells: list[Any] = [str(row.epoch), row.trained_on]
        if has_zones:
            cells += [
                format_number(values.get("zpd/ppl")),
                format_number(values.get("zpd/level")),
                band_cell(values),
                format_number(values.get("zpd/zone_fraction"), percent=True),
                format_number(values.get("zpd/num_selected")),
                format_number(values.get("zpd/num_widened")),
                format_number(values.get("zpd/hit_rate"), percent=True),
            ]
        for name in eval_names:
            value = format_number(row.evaluation.get(name)) if row.evaluation is not None else MISSING
            if row.evaluation is not None and abs(row.eval_epoch - (row.epoch + 1)) > 0.01:
                value += f" (at epoch {row.eval_epoch:.2f})"
            cells.append(value)
        table_rows.append(cells)
    lines += _table(header, table_rows)
    lines.append("")

    lines += ["## Final evaluation", ""]
    evals = evaluations(run.log_history)
    if evals:
        last = evals[-1]
        lines.append(f"At step {format_number(last.get('step'))} (epoch {format_number(last.get('epoch'))}):")
        lines.append("")
        lines += _table(
            ["metric", "value"], [(name, format_number(last[name])) for name in eval_names if name in last]
        )
    else:
        lines.append("No evaluation was logged (set eval_strategy and pass an eval_dataset).")
    summary = next((entry for entry in reversed(run.log_history) if "train_runtime" in entry), None)
    if summary is not None:
        lines.append("")
        lines.append(
            f"Training loss over the run: {format_number(summary.get('train_loss'))}; "
            f"runtime {format_number(summary.get('train_runtime'))} s."
        )
    lines.append("")

    lines += ["## Plots", ""]
    for name, caption in plots.items():
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    if notes or run.notes:
        lines += ["## Notes", ""]
        lines += [f"- {note}" for note in [*run.notes, *notes]]
        lines.append("")
    return "\n".join(lines)


# ---- the report ----


def write_report(run_dir: str | os.PathLike, output_dir: str | os.PathLike | None = None) -> str:
    """Writes the PNG plots and `report.md` of a training run and returns the folder they are in.

    Args:
        run_dir (`str` or `os.PathLike`):
            The run's `output_dir` (or one checkpoint folder). Its `trainer_state.json` (from `trainer.save_state()`)
            is read, else the last complete checkpoint's; and its `zpd_curriculum.parquet` where there is one.
        output_dir (`str` or `os.PathLike`, *optional*, defaults to `<run_dir>/zpd_report`):
            Where the report goes; created if needed. Plots of an earlier report that this one has no data for are
            removed, so the folder never mixes two runs.

    Returns:
        `str`: the report folder.

    Raises:
        [`ReportError`] (a `ValueError`): the folder is missing, holds neither a `trainer_state.json` nor a complete
            checkpoint, or its curriculum record is damaged; the message names the folder or file.

    Example:

    ```python
    >>> from hf_zpd.report import write_report
    >>> write_report("out")  # after trainer.train() and trainer.save_state()  # doctest: +SKIP
    'out/zpd_report'

    ```
    """
    run = load_run(run_dir)
    output_dir = os.fspath(output_dir) if output_dir is not None else os.path.join(run.run_dir, REPORT_DIR_NAME)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ReportError(f"Cannot write the report into {output_dir}: it is a file, not a folder.")
    metrics = zone_metrics(run)
    rows = epoch_rows(run)
    notes: list[str] = []
    images: dict[str, tuple[str, bytes | None]] = {
        LEARNING_CURVE: ("Learning curve", plot_learning_curve(run.log_history)),
        PPL_BAND: ("Scored PPL, level D, running PPL and band", plot_ppl_band(metrics, run.log_history)),
        ZONE_FRACTION: ("Zone fraction and zone size", plot_zone_fraction(metrics)),
    }
    if images[LEARNING_CURVE][1] is None:
        notes.append("No training loss or evaluation was logged, so there is no learning curve.")
    if run.record is not None:
        epochs = _histogram_epochs(run.record)
        if len(epochs) > MAX_HISTOGRAM_PANELS:
            picked = np.unique(np.linspace(0, len(epochs) - 1, MAX_HISTOGRAM_PANELS).round().astype(int))
            notes.append(
                f"{len(epochs)} epochs have scores; the difficulty histograms show {len(picked)} evenly spaced ones."
            )
            epochs = [epochs[i] for i in picked]
        images[DIFFICULTY_HISTOGRAMS] = ("Difficulty histograms", plot_difficulty_histograms(run.record, epochs))
        if not epochs:
            notes.append("No epoch has drawn from a scored zone yet, so there are no difficulty histograms.")
    if run.record is not None and not metrics:
        notes.append("No zone has been chosen yet (the first one is chosen when epoch 0 ends): no zone plots.")
    images[HIT_RATE] = ("Hit rate", plot_hit_rate(metrics))
    if metrics and images[HIT_RATE][1] is None:
        notes.append(
            "No hit rate: it needs two consecutive scoring passes and examples outside the zone, so the first zone "
            "never has one (zpd/hit_rate is absent or NaN for every epoch)."
        )

    written: dict[str, str] = {}
    for name, (caption, payload) in images.items():
        if payload is not None:
            atomic_write_bytes(os.path.join(output_dir, name), payload)
            written[name] = caption
    for name in PLOT_NAMES:
        stale = os.path.join(output_dir, name)
        if name not in written and os.path.isfile(stale):
            os.remove(stale)
    # The markdown goes last: a report.md always links plots that exist.
    markdown = _render_markdown(run, rows, metrics, written, notes)
    atomic_write_bytes(os.path.join(output_dir, REPORT_NAME), markdown.encode())
    return output_dir


__all__ = [
    "EpochRow",
    "ReportError",
    "RunData",
    "band_cell",
    "epoch_rows",
    "format_number",
    "load_run",
    "write_report",
    "zone_metrics",
]
