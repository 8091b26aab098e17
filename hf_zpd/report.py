"""A run report: plots and a markdown summary of a finished (or interrupted) training run, read from its folder.

[`write_report`] reads the Trainer's log history (`trainer_state.json`, written by `trainer.save_state()`, else the
one of the last complete checkpoint) and, for a [`ZPDTrainer`] run, the curriculum record (`zpd_curriculum.parquet`),
and writes into `<run_dir>/zpd_report/`:

| file | content |
|---|---|
| `learning_curve.png` | training and evaluation loss by step, the evaluation metrics, and the epoch boundaries |
| `ppl_band.png` | per epoch: the scored PPL, the level D, the running PPL and the band `[band_lower, band_upper]` |
| `epoch_draws.png` | per epoch: the samples drawn from the zone, the fill, replay and annealing; the pool's share in the band |
| `difficulty_histograms.png` | per scored epoch: the pool's difficulty, the zone and the band |
| `hit_rate.png` | per epoch: the zone detector's hit rate and the loss drops behind it (two epochs or more; else a table) |
| `grpo_rounds.png` | a GRPO run's prompt curriculum per round: the share of groups with zero reward variance, the predicted share of mixed groups, the mean reward and the completion tokens (`zpd_grpo_curriculum.parquet`) |
| `data_map.png` | the data map (Dataset Cartography): each example's confidence against its variability over the training passes, coloured by correctness, the label audit's list marked (two epochs or more) |
| `report.md` | the run's settings, the per-epoch table, the final evaluation, and the plots |

Epochs are numbered as the Trainer logs them (the first is 1), as in the CLI summary and the cards. A run of the
plain `Trainer` gets the learning curve and the per-epoch evaluations only. Plots are drawn with the object-oriented
matplotlib API (no `pyplot`, so no global backend state), and every file is written through a temporary file and an
atomic rename.
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

from ._io import atomic_write_bytes
from .data_map import DataMap, data_map
from .epoch_table import (
    LEGEND,
    eval_metric_names,
    evaluations,
    format_number,
    is_finite_number,
    logged_epoch_metrics,
    markdown_table,
    render_epoch_table,
)
from .grpo_record import GRPO_RECORD_NAME, PromptRecord
from .label_errors import likely_label_errors
from .record import RECORD_NAME, CurriculumRecord
from .state import TRAINER_STATE_NAME, last_complete_checkpoint

REPORT_DIR_NAME = "zpd_report"
REPORT_NAME = "report.md"
LEARNING_CURVE = "learning_curve.png"
PPL_BAND = "ppl_band.png"
EPOCH_DRAWS = "epoch_draws.png"
DIFFICULTY_HISTOGRAMS = "difficulty_histograms.png"
HIT_RATE = "hit_rate.png"
DATA_MAP = "data_map.png"
GRPO_ROUNDS = "grpo_rounds.png"
PLOT_NAMES = (LEARNING_CURVE, PPL_BAND, EPOCH_DRAWS, DIFFICULTY_HISTOGRAMS, HIT_RATE, DATA_MAP)  # a ZPDTrainer run's
ALL_PLOT_NAMES = (*PLOT_NAMES, GRPO_ROUNDS)  # a ZPDGRPOTrainer run adds its rounds' plot
# Beyond this many scored epochs the histogram grid becomes unreadable: evenly spaced epochs are drawn instead.
MAX_HISTOGRAM_PANELS = 12
DPI = 100
# The draws of an epoch, stacked: (metric key, label, colour).
_DRAW_PARTS = (
    ("zpd/zone_draws", "zone", "tab:orange"),
    ("zpd/fill_draws", "fill", "tab:blue"),
    ("zpd/replay_draws", "replay", "tab:gray"),
    ("zpd/anneal_draws", "anneal", "tab:green"),
)


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
    prompt_record: PromptRecord | None = None

    @property
    def log_history(self) -> list[dict[str, Any]]:
        return self.state["log_history"]


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
        except ReportError:  # readable JSON but not a state file: ignore it
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
    for folder in (os.path.dirname(state_path), run_dir, checkpoint):
        if folder is not None and os.path.isfile(os.path.join(folder, RECORD_NAME)):
            record_path = os.path.join(folder, RECORD_NAME)
            break
    record = None
    if record_path is not None:
        try:
            record = CurriculumRecord.load(record_path)
        except ValueError as error:
            raise ReportError(str(error)) from error
    prompt_record = None
    for folder in (os.path.dirname(state_path), run_dir, checkpoint):
        if folder is not None and os.path.isfile(os.path.join(folder, GRPO_RECORD_NAME)):
            try:
                prompt_record = PromptRecord.load(os.path.join(folder, GRPO_RECORD_NAME))
            except ValueError as error:
                raise ReportError(str(error)) from error
            break
    return RunData(run_dir, state_path, state, record, record_path, notes, prompt_record)


def epoch_metrics(run: RunData) -> dict[int, dict[str, float]]:
    """Epoch -> the `zpd/*` metrics logged when it was planned: the log's, with the record's filling the epochs the
    log lacks (a replayed curriculum, or a log cut short)."""
    metrics = dict(run.record.epoch_metrics) if run.record is not None else {}
    metrics.update(logged_epoch_metrics(run.log_history))
    return dict(sorted(metrics.items()))


def trained_epochs(run: RunData) -> float:
    """How far training went, in epochs (fractional for a run stopped mid-epoch)."""
    epochs = [entry["epoch"] for entry in run.log_history if is_finite_number(entry.get("epoch"))]
    if is_finite_number(run.state.get("epoch")):
        epochs.append(run.state["epoch"])
    return max(epochs, default=0.0)


# ---- plots ----


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()


def _series(entries: Iterable[dict[str, Any]], x_key: str, y_key: str) -> tuple[np.ndarray, np.ndarray]:
    """The finite (x, y) pairs of the entries that carry both keys."""
    pairs = [
        (e[x_key], e[y_key]) for e in entries if is_finite_number(e.get(x_key)) and is_finite_number(e.get(y_key))
    ]
    if not pairs:
        return np.zeros(0), np.zeros(0)
    x, y = zip(*pairs, strict=True)
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)


def _metric_series(metrics: dict[int, dict[str, float]], key: str) -> tuple[np.ndarray, np.ndarray]:
    return _series(({"epoch": epoch, **values} for epoch, values in metrics.items()), "epoch", key)


def _legend(axes, **options) -> None:
    if axes.get_legend_handles_labels()[0]:
        axes.legend(fontsize="small", **options)


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
    axes.set_xlabel("epoch")


def epoch_boundaries(log_history: Sequence[dict[str, Any]]) -> list[tuple[int, float]]:
    """(epoch e, the step at which it ended) for every epoch that ended, from the logged `epoch` and `step`."""
    ends: dict[int, float] = {}
    for entry in log_history:
        epoch, step = entry.get("epoch"), entry.get("step")
        if is_finite_number(epoch) and is_finite_number(step) and abs(epoch - round(epoch)) < 1e-6 and epoch >= 1:
            ends.setdefault(int(round(epoch)), float(step))
    return sorted(ends.items())


def learning_curve_figure(log_history: Sequence[dict[str, Any]]) -> Figure | None:
    """Training loss and evaluation losses by step, the other evaluation metrics in a second panel, and a dotted
    line where each epoch ended; `None` when nothing was logged."""
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
    loss_axes.set_title("Learning curve (dotted: end of each epoch)")
    if others:
        for name in others:
            steps, values = _series(evals, "step", name)
            axes[1].plot(steps, values, marker="o", label=name.replace("_", " "))
        axes[1].set_ylabel("evaluation metric")
    boundaries = epoch_boundaries(log_history)
    for panel in axes:
        panel.grid(alpha=0.3)
        for _, step in boundaries:
            panel.axvline(step, color="black", linestyle=":", linewidth=0.8)
        _legend(panel)
    # The epochs' names at the top, between their boundaries.
    start = 0.0
    for epoch, step in boundaries:
        loss_axes.annotate(f"epoch {epoch}", xy=((start + step) / 2, 0.99), xycoords=("data", "axes fraction"),
                           ha="center", va="top", fontsize="x-small", color="dimgray")  # fmt: skip
        start = step
    axes[-1].set_xlabel("step")
    return figure


def ppl_band_figure(metrics: dict[int, dict[str, float]]) -> Figure | None:
    """Per epoch, the scored PPL, the level D, the running PPL when the epoch was planned, and the band; `None`
    without scored epochs."""
    band = {e: v for e, v in metrics.items() if is_finite_number(v.get("zpd/band_lower"))}
    epochs, lower = _metric_series(band, "zpd/band_lower")
    _, upper = _metric_series(band, "zpd/band_upper")
    ppl_epochs, ppl = _metric_series(metrics, "zpd/ppl")
    level_epochs, level = _metric_series(metrics, "zpd/level")
    if not (epochs.size or ppl.size or level.size):
        return None
    figure = Figure(figsize=(8, 4.5), layout="constrained")
    axes = figure.add_subplot()
    if epochs.size:
        # One bar per epoch: the band is chosen once per epoch, so a bar (unlike a filled line) shows a single band.
        axes.bar(epochs, upper - lower, bottom=lower, width=0.5, alpha=0.25, color="tab:green", label="band")
    if ppl.size:
        axes.plot(ppl_epochs, ppl, marker="o", label="scored PPL (zpd/ppl)")
    if level.size:
        axes.plot(level_epochs, level, marker="s", label="level D (zpd/level)")
    running_epochs, running = _metric_series(metrics, "zpd/running_ppl")
    if running.size:
        axes.plot(running_epochs, running, marker="^", linestyle="--", label="running PPL when planned")
    axes.set_ylabel("perplexity (difficulty scale)")
    axes.set_title("The pool's level and the band, per epoch (scores of the pass before it)")
    axes.grid(alpha=0.3)
    _epoch_axis(axes, [*epochs, *ppl_epochs, *level_epochs])
    _legend(axes)
    return figure


def epoch_draws_figure(metrics: dict[int, dict[str, float]]) -> Figure | None:
    """Per epoch, its samples stacked by where they were drawn (zone, fill, replay, anneal; an epoch drawn
    uniformly is one bar of the whole set), and the share of the pool inside the band; `None` without a composed
    epoch."""
    composed = {e: v for e, v in metrics.items() if "zpd/zone_draws" in v}
    if not composed:
        return None
    uniform = sorted(e for e, v in metrics.items() if v.get("zpd/uniform") and e not in composed)
    epochs = np.array(sorted([*composed, *uniform]), dtype=np.float64)
    figure = Figure(figsize=(8, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    stacked = np.zeros(epochs.size)
    for key, label, colour in _DRAW_PARTS:
        values = np.array([composed[int(e)].get(key, 0.0) if int(e) in composed else 0.0 for e in epochs])
        if values.any():  # no legend entry (and no bar) for a part no epoch drew from
            top.bar(epochs, values, bottom=stacked, width=0.6, color=colour, label=label)
            stacked += values
    if uniform:
        # Every epoch has the same number of samples, so a uniform epoch's bar is as tall as a composed one's.
        samples = max(sum(v.get(key, 0.0) for key, _, _ in _DRAW_PARTS) for v in composed.values())
        top.bar(
            uniform, [samples] * len(uniform), width=0.6, color="tab:purple", alpha=0.35, label="whole set (uniform)"
        )
        stacked[np.isin(epochs, uniform)] = samples
    # Headroom above the bars for the legend in one row, so that it covers no bar.
    top.set_ylim(0, stacked.max() * 1.25 if stacked.max() > 0 else 1)
    top.set_ylabel("samples drawn")
    top.set_title("Where each epoch's samples came from")
    _legend(top, loc="upper center", ncols=len(top.get_legend_handles_labels()[1]))
    fraction_epochs, fraction = _metric_series(composed, "zpd/zone_fraction")
    bottom.plot(fraction_epochs, fraction, marker="o", color="tab:purple", label="pool share inside the band")
    bottom.yaxis.set_major_formatter(PercentFormatter(1.0))
    # Scaled to the data (a zone of a few percent would be a flat line on a 0-100% axis), with room above it.
    bottom.set_ylim(0, min(1.05, max(0.05, 1.3 * float(fraction.max(initial=0)))))
    bottom.set_ylabel("share of the pool")
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
    _legend(bottom)
    _epoch_axis(bottom, epochs)
    return figure


def _histogram_epochs(record: CurriculumRecord) -> list[int]:
    """The epochs with a zone and scores behind it (a resumed run may have zones without)."""
    return [epoch for epoch in sorted(record.zones) if record.scores_for(epoch) is not None]


def difficulty_axis(axes, low: float, high: float) -> None:
    """A log axis for difficulties; over less than a decade, a few plainly written ticks instead of 3.4x10^1."""
    axes.set_xscale("log")
    if high / low < 10:
        axes.xaxis.set_major_locator(MaxNLocator(nbins=5))
        axes.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:.3g}"))
        axes.xaxis.set_minor_formatter(NullFormatter())


def difficulty_histograms_figure(record: CurriculumRecord, epochs: Sequence[int]) -> Figure | None:
    """One panel per epoch: the pool's difficulty (the zone stacked on top), the pooled band and the level D."""
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
        metrics = record.epochs[epoch].metrics
        difficulty, zone = data["difficulty"], data["in_zone"].astype(bool)
        finite = np.isfinite(difficulty) & (difficulty > 0)
        level, lower, upper = (metrics.get(k, math.nan) for k in ("zpd/level", "zpd/band_lower", "zpd/band_upper"))
        edges = [v for v in (lower, upper) if is_finite_number(v) and v > 0]
        span = np.concatenate([difficulty[finite], edges])
        if span.size == 0:
            axes.text(0.5, 0.5, "no finite difficulty", ha="center", va="center", transform=axes.transAxes)
        else:
            low, high = float(span.min()), float(span.max())
            if high <= low * 1.0001:
                low, high = low * 0.95, high * 1.05
            # Log-spaced bins on a log axis: the band [lower D, upper D] is multiplicative, so it keeps its width.
            bins = np.geomspace(low, high, int(np.clip(np.sqrt(finite.sum()), 8, 50)) + 1)
            parts = [(difficulty[finite & ~zone], "outside the zone", "tab:blue")]
            parts.append((difficulty[finite & zone], "zone", "tab:orange"))
            parts = [part for part in parts if part[0].size]
            axes.hist([p[0] for p in parts], bins=bins, stacked=True, color=[p[2] for p in parts],
                      label=[p[1] for p in parts])  # fmt: skip
            difficulty_axis(axes, low, high)
            if len(edges) == 2:
                axes.axvspan(lower, upper, color="tab:green", alpha=0.2, label="band (pooled)", zorder=0)
            if is_finite_number(level):
                axes.axvline(level, color="black", linestyle="--", linewidth=1, label="level D")
        scored_at = record.epochs[epoch].scored_at
        axes.set_title(f"epoch {epoch} (scores after epoch {scored_at})" if scored_at else f"epoch {epoch}",
                       fontsize="medium")  # fmt: skip
        axes.set_xlabel("difficulty (effective perplexity)")
        axes.set_ylabel("examples")
    _legend(grid.flat[0])
    figure.suptitle("Pool difficulty per epoch, with the ZPD band")
    return figure


def hit_rate_figure(metrics: dict[int, dict[str, float]]) -> Figure | None:
    """Per epoch, the hit rate and the loss drops of the zone and of the rest; `None` unless at least two epochs
    have a hit rate (a single value goes into the report's table instead)."""
    epochs, hit_rate = _metric_series(metrics, "zpd/hit_rate")
    if hit_rate.size < 2:
        return None
    drop_epochs, selected_drop = _metric_series(metrics, "zpd/selected_loss_drop")
    other_epochs, other_drop = _metric_series(metrics, "zpd/other_loss_drop")
    figure = Figure(figsize=(8, 6), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(epochs, hit_rate, marker="o", color="tab:purple")
    top.set_ylim(-0.05, 1.05)
    top.yaxis.set_major_formatter(PercentFormatter(1.0))
    top.set_ylabel("previous zone's loss fell\nmore than the rest's mean")
    top.set_title("Zone detector hit rate")
    bottom.plot(drop_epochs, selected_drop, marker="o", label="previous zone")
    bottom.plot(other_epochs, other_drop, marker="s", label="rest of the pool")
    bottom.axhline(0.0, color="black", linewidth=0.8)
    bottom.set_ylabel("mean loss drop since the last pass")
    for axes in (top, bottom):
        axes.grid(alpha=0.3)
    _legend(bottom)
    _epoch_axis(bottom, [*epochs, *drop_epochs, *other_epochs])
    bottom.set_xlabel("epoch (whose planning measured the drop)")
    return figure


def grpo_rounds_figure(record: PromptRecord) -> Figure | None:
    """Per generation round (moving mean over a window of rounds): the share of groups whose rewards did not vary,
    the share the curriculum predicted to be mixed, the mean reward, and the cumulative completion tokens."""
    rows = record.observed()
    if rows["round"].size == 0:
        return None
    rounds = np.unique(rows["round"])
    per_round = {name: np.array([rows[name][rows["round"] == r].mean() for r in rounds]) for name in
                 ("mixed", "score", "mean_reward")}  # fmt: skip
    tokens = np.cumsum([rows["completion_tokens"][rows["round"] == r].sum() for r in rounds])
    window = max(1, rounds.size // 20)
    kernel = np.ones(window) / window

    def smooth(values):
        return np.convolve(values, kernel, mode="valid") if values.size >= window else values

    x = rounds[window - 1 :] if rounds.size >= window else rounds
    figure = Figure(figsize=(8, 6.5), layout="constrained")
    top, bottom = figure.subplots(2, 1, sharex=True)
    top.plot(x, smooth(1.0 - per_round["mixed"]), label="groups with zero reward variance (realised)")
    top.plot(x, smooth(1.0 - per_round["score"]), linestyle="--", label="1 - predicted P(mixed) of the drawn prompts")
    top.plot(x, smooth(per_round["mean_reward"]), label="mean reward")
    top.set_ylim(-0.02, 1.02)
    top.set_ylabel(f"share (moving mean of {window} rounds)")
    top.grid(alpha=0.3)
    _legend(top)
    bottom.plot(rounds, tokens, color="tab:gray")
    bottom.set_ylabel("completion tokens generated")
    bottom.set_xlabel("generation round")
    bottom.grid(alpha=0.3)
    top.set_title("GRPO prompt curriculum per round")
    return figure


def data_map_figure(cartography: DataMap, listed: np.ndarray | None = None) -> Figure:
    """Confidence against variability for every measured example, coloured by correctness (by confidence when the
    run kept no class probabilities), with the label audit's listed examples circled."""
    measured = np.isfinite(cartography.confidence)
    figure = Figure(figsize=(7.5, 6), layout="constrained")
    axes = figure.subplots()
    colour = cartography.correctness if np.isfinite(cartography.correctness[measured]).any() else None
    colouring = {"c": colour[measured], "cmap": "coolwarm_r", "vmin": 0.0, "vmax": 1.0} if colour is not None else {}
    points = axes.scatter(
        cartography.variability[measured], cartography.confidence[measured], s=9, alpha=0.7, linewidths=0, **colouring
    )
    if colour is not None:
        figure.colorbar(points, ax=axes, label="correctness (share of passes that predicted the given label)")
    if listed is not None and listed.size:
        axes.scatter(cartography.variability[listed], cartography.confidence[listed], s=30, facecolors="none",
                     edgecolors="black", linewidths=0.8, label=f"label audit's list ({listed.size})")  # fmt: skip
        _legend(axes, loc="upper right")
    axes.set_xlabel("variability (std of the given label's probability over the training passes)")
    axes.set_ylabel("confidence (its mean)")
    axes.set_ylim(-0.02, 1.02)
    axes.grid(alpha=0.3)
    epochs = ", ".join(str(epoch) for epoch in cartography.epochs)
    axes.set_title(f"Data map: training passes of epochs {epochs}\n(top: easy to learn, right: ambiguous, "
                   "bottom left: hard to learn)", fontsize="medium")  # fmt: skip
    return figure


# ---- markdown ----


def _setting(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return ", ".join(_setting(item) for item in value)
    if isinstance(value, float):
        return format_number(value)
    return "—" if value is None else str(value)


def _render_markdown(run: RunData, metrics: dict, plots: dict[str, str], notes: list[str]) -> str:
    state, record = run.state, run.record
    title = os.path.basename(os.path.normpath(os.path.abspath(run.run_dir)))
    lines = [f"# Training run report: {title}", ""]
    if record is not None:
        base_model, source = record.settings.get("base_model"), record.settings.get("source_dataset")
        lines.append(f"- Model: `{base_model}`" if base_model else "- Model: not recorded")
        lines.append(f"- Training data: `{source}`, {record.dataset_size} examples" if source else
                     f"- Training data: {record.dataset_size} examples")  # fmt: skip
    lines.append(f"- Run folder: `{run.run_dir}`")
    lines.append(f"- Log history: `{os.path.relpath(run.state_path, run.run_dir)}`")
    step, max_steps = state.get("global_step"), state.get("max_steps")
    # A checkpoint saved at the last step is written before the Trainer logs its summary (`train_runtime`).
    finished = any("train_runtime" in entry for entry in run.log_history) or (
        is_finite_number(step) and is_finite_number(max_steps) and 0 < max_steps <= step
    )
    progress = f"step {format_number(step)} of {format_number(max_steps)}, epoch {trained_epochs(run):.2f}"
    lines.append(f"- Training finished: {progress}." if finished else
                 f"- Training did not finish in this log (interrupted, or still running): {progress}.")  # fmt: skip
    if record is not None:
        lines.append(f"- Curriculum record: `{os.path.relpath(run.record_path, run.run_dir)}`")
    else:
        what = (
            "the zone plots come from the logged `zpd/*` metrics, and there are no difficulty histograms."
            if metrics
            else "the report shows the learning curve and the evaluations only."
        )
        lines += ["", f"**No curriculum record**: neither the run folder nor its last checkpoint holds a "
                  f"`{RECORD_NAME}`. This is a run of the plain `Trainer` (or its record was removed), so {what}"]  # fmt: skip
    lines.append("")

    if record is not None:
        lines += ["## Curriculum settings", ""]
        lines += markdown_table(["setting", "value"], [(k, _setting(v)) for k, v in record.settings.items()])
        if record.settings.get("replayed_from"):
            notes.append(
                f"This run replayed the curriculum `{record.settings['replayed_from']}`: its draws, PPLs and bands "
                "are those of the recorded run (no scoring pass ran here)."
            )
        lines.append("")

    lines += ["## Epochs", ""]
    lines.append(
        "Epochs are numbered as the Trainer logs them (the first is 1). Epoch e's zone columns come from the scoring "
        "pass when epoch e - 1 ended (or before training); its evaluation columns are the evaluation at its end."
    )
    lines += ["", render_epoch_table(run.log_history, metrics, math.ceil(trained_epochs(run) - 1e-6)), ""]
    if metrics:
        lines += [LEGEND, ""]
    hit_rates = {epoch: values["zpd/hit_rate"] for epoch, values in metrics.items() if "zpd/hit_rate" in values}
    if hit_rates and HIT_RATE not in plots:
        lines += ["Hit rate of the zone detector (the share of the previous zone whose loss fell more than the rest's "
                  "mean; one value, so no plot):", ""]  # fmt: skip
        rows = [(epoch, format_number(rate, percent=True), format_number(metrics[epoch].get("zpd/selected_loss_drop")),
                 format_number(metrics[epoch].get("zpd/other_loss_drop"))) for epoch, rate in hit_rates.items()]  # fmt: skip
        lines += markdown_table(["epoch", "hit rate", "zone's loss drop", "rest's loss drop"], rows) + [""]

    lines += ["## Final evaluation", ""]
    evals = evaluations(run.log_history)
    if evals:
        last = evals[-1]
        lines += [f"At step {format_number(last.get('step'))} (epoch {format_number(last.get('epoch'))}):", ""]
        names = eval_metric_names(run.log_history)
        lines += markdown_table(
            ["metric", "value"], [(name, format_number(last[name])) for name in names if name in last]
        )
    else:
        lines.append("No evaluation was logged (set eval_strategy and pass an eval_dataset).")
    summary = next((entry for entry in reversed(run.log_history) if "train_runtime" in entry), None)
    if summary is not None:
        lines += ["", f"Training loss over the run: {format_number(summary.get('train_loss'))}; runtime "
                  f"{format_number(summary.get('train_runtime'))} s."]  # fmt: skip
    lines += ["", "## Plots", ""]
    for name, caption in plots.items():
        lines += [f"### {caption}", "", f"![{caption}]({name})", ""]
    if notes or run.notes:
        lines += ["## Notes", ""] + [f"- {note}" for note in [*run.notes, *notes]] + [""]
    return "\n".join(lines)


# ---- the report ----


def report_figures(run: RunData) -> tuple[dict[str, tuple[str, Figure | None]], list[str]]:
    """Every plot of the report (`None` where there is nothing to draw) and the notes on what is missing."""
    metrics = epoch_metrics(run)
    notes: list[str] = []
    figures: dict[str, tuple[str, Figure | None]] = {
        LEARNING_CURVE: ("Learning curve", learning_curve_figure(run.log_history)),
        PPL_BAND: ("Scored PPL, level D, running PPL and band", ppl_band_figure(metrics)),
        EPOCH_DRAWS: ("Where each epoch's samples came from", epoch_draws_figure(metrics)),
    }
    if figures[LEARNING_CURVE][1] is None:
        notes.append("No training loss or evaluation was logged, so there is no learning curve.")
    if run.record is not None:
        epochs = _histogram_epochs(run.record)
        if len(epochs) > MAX_HISTOGRAM_PANELS:
            picked = np.unique(np.linspace(0, len(epochs) - 1, MAX_HISTOGRAM_PANELS).round().astype(int))
            notes.append(f"{len(epochs)} epochs have scores; the difficulty histograms show {len(picked)} of them.")
            epochs = [epochs[i] for i in picked]
        figures[DIFFICULTY_HISTOGRAMS] = ("Difficulty histograms", difficulty_histograms_figure(run.record, epochs))
        if not epochs:
            notes.append("No epoch has been drawn around a scored zone yet, so there are no difficulty histograms.")
    figures[HIT_RATE] = ("Hit rate", hit_rate_figure(metrics))
    if run.prompt_record is not None:
        figures[GRPO_ROUNDS] = ("GRPO prompt curriculum per round", grpo_rounds_figure(run.prompt_record))
    if run.record is not None and len(run.record.training_passes) >= 2:
        listed = None
        if run.record.labels is not None:
            try:
                listed = likely_label_errors(run.record, listed_only=True)["index"].to_numpy()
            except ValueError as error:  # no audit for this record: the map alone
                notes.append(f"The data map marks no label errors: {error}")
        figures[DATA_MAP] = ("Data map", data_map_figure(data_map(run.record), listed))
    elif run.record is not None:
        notes.append("No data map: it needs the training passes of two epochs or more.")
    has_hit_rate = any("zpd/hit_rate" in values for values in metrics.values())
    if metrics and not has_hit_rate:
        notes.append(
            "No hit rate: it needs two consecutive scoring passes and a zone trained on in between, so the first zone "
            "never has one."
        )
    return figures, notes


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
    figures, notes = report_figures(run)
    written: dict[str, str] = {}
    for name, (caption, figure) in figures.items():
        if figure is not None:
            atomic_write_bytes(os.path.join(output_dir, name), _png(figure))
            written[name] = caption
    for name in ALL_PLOT_NAMES:
        stale = os.path.join(output_dir, name)
        if name not in written and os.path.isfile(stale):
            os.remove(stale)
    # The markdown goes last: a report.md always links plots that exist.
    markdown = _render_markdown(run, epoch_metrics(run), written, notes)
    atomic_write_bytes(os.path.join(output_dir, REPORT_NAME), markdown.encode())
    return output_dir


__all__ = ["ReportError", "RunData", "epoch_metrics", "load_run", "report_figures", "write_report"]
