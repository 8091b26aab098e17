"""The per-epoch table: one row per epoch, what it drew and the evaluation after it.

The CLI summary, the run report and the cards all show this table, from the same rows, the same cells and the same
number format. Epochs are numbered as the Trainer logs them: the first epoch is epoch 1, and the evaluation at its
end is logged with `epoch` 1.0. Epoch e's `zpd/*` metrics are logged when it is planned (after the scoring pass at
the end of epoch e - 1, or before training).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

MISSING = "—"
# Evaluation keys that measure speed, not the model: left out of the tables and plots.
_SPEED_SUFFIXES = ("_runtime", "_per_second", "_preparation_time")
_BOOKKEEPING = ("epoch", "step")

# The zone columns: (header, metric key, percent?).
ZONE_COLUMNS = (
    ("pool PPL", "zpd/ppl", False),
    ("level D", "zpd/level", False),
    ("band", None, False),
    ("in band", "zpd/zone_fraction", True),
    ("zone", "zpd/num_selected", False),
    ("widened", "zpd/num_widened", False),
    ("zone draws", "zpd/zone_draws", False),
    ("fill draws", "zpd/fill_draws", False),
    ("skipped", "zpd/num_skipped", False),
    ("out of reach", "zpd/num_out_of_reach", False),
)
LEGEND = (
    "pool PPL: exp(mean loss) of the training pool at the scoring pass before the epoch; level D and band: the "
    "model's level and the zone's edges on the difficulty scale (band_lower x D, band_upper x D; with class balance, "
    "over the whole pool for reference); in band: share of the pool inside the band; zone: examples the epoch was "
    "drawn around (after widening); zone / fill draws: samples from the zone and from outside it; skipped: pool "
    "examples the epoch did not draw; out of reach: examples the learnability guard excluded; + anneal: the epoch "
    "ends with samples drawn uniformly from the whole set (its samples beyond the zone and fill draws)."
)


def format_number(value: Any, percent: bool = False) -> str:
    """How every table writes a number: 4 significant digits, integers without a decimal point, `—` for a missing,
    NaN or infinite value, and a fraction as a percentage with one decimal when `percent`."""
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


def is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass
class EpochRow:
    """One epoch of the table.

    Args:
        epoch (`int`): the epoch (1 = the first).
        drawn_from (`str`): what the epoch drew from, in words.
        metrics (`dict[str, float]`): the `zpd/*` metrics logged when it was planned (empty for a plain run).
        evaluation (`dict[str, float]`, *optional*): the evaluation at (or nearest to) its end.
        eval_epoch (`float`, *optional*): the Trainer epoch of that evaluation.
    """

    epoch: int
    drawn_from: str
    metrics: dict[str, float]
    evaluation: dict[str, Any] | None = None
    eval_epoch: float | None = None


def is_eval_metric(key: str) -> bool:
    return key.startswith("eval_") and not key.endswith(_SPEED_SUFFIXES)


def evaluations(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations in log order, one dict per evaluated step (several eval datasets log one entry each)."""
    by_step: dict[Any, dict[str, Any]] = {}
    for entry in log_history:
        if any(is_eval_metric(key) for key in entry):
            merged = by_step.setdefault(entry.get("step"), {})
            merged.update({key: value for key, value in entry.items() if is_eval_metric(key) or key in _BOOKKEEPING})
    return list(by_step.values())


def eval_metric_names(log_history: Sequence[dict[str, Any]]) -> list[str]:
    """Every evaluation metric logged, losses first, each group in order of first appearance."""
    names = list(dict.fromkeys(key for entry in evaluations(log_history) for key in entry if is_eval_metric(key)))
    return [name for name in names if name.endswith("loss")] + [name for name in names if not name.endswith("loss")]


def evaluation_after_epochs(log_history: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Epoch e -> the evaluation nearest to its end (Trainer epoch e), among the evaluations that round to e."""
    chosen: dict[int, dict[str, Any]] = {}
    for evaluation in evaluations(log_history):
        if not is_finite_number(evaluation.get("epoch")):
            continue
        # Round half up, so that each evaluation belongs to one epoch end; the nearest one wins, ties the later.
        end = math.floor(evaluation["epoch"] + 0.5)
        previous = chosen.get(end)
        if previous is None or abs(evaluation["epoch"] - end) <= abs(previous["epoch"] - end):
            chosen[end] = evaluation
    return {epoch: evaluation for epoch, evaluation in chosen.items() if epoch >= 1}


def logged_epoch_metrics(log_history: Sequence[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Epoch -> the `zpd/*` metrics logged when it was planned; a later entry for an epoch replaces an earlier one
    (a resumed run plans it again)."""
    metrics: dict[int, dict[str, float]] = {}
    for entry in log_history:
        if is_finite_number(entry.get("zpd/epoch")):
            metrics[int(round(entry["zpd/epoch"]))] = {k: v for k, v in entry.items() if k.startswith("zpd/")}
    return metrics


def drawn_from(metrics: dict[str, float]) -> str:
    """What an epoch drew from, in words, from its logged metrics."""
    if not metrics or metrics.get("zpd/uniform"):
        return "whole set (uniform)"
    source = "zone + fill" if metrics.get("zpd/fill_draws", 0) > 0 else "zone"
    if metrics.get("zpd/replay_draws", 0) > 0:
        source += " + replay"
    if metrics.get("zpd/anneal_draws", 0) > 0:
        source += " + anneal"
    if metrics.get("zpd/rescored") == 0:
        source += " (latest scores)"
    return source


def epoch_rows(
    log_history: Sequence[dict[str, Any]],
    epoch_metrics: dict[int, dict[str, float]] | None = None,
    num_epochs: int | None = None,
) -> list[EpochRow]:
    """One row per epoch: those that trained (`num_epochs`), and those that were planned.

    Args:
        log_history (`Sequence[dict]`): the Trainer's log history (`trainer.state.log_history`).
        epoch_metrics (`dict[int, dict[str, float]]`, *optional*): metrics from a curriculum record, for epochs the
            log lacks (a replayed curriculum, or a log cut short); the log wins where both have an epoch.
        num_epochs (`int`, *optional*): the epochs that trained; defaults to the last logged epoch, rounded up.
    """
    metrics = {epoch: dict(values) for epoch, values in (epoch_metrics or {}).items()}
    metrics.update(logged_epoch_metrics(log_history))
    if num_epochs is None:
        logged = [entry["epoch"] for entry in log_history if is_finite_number(entry.get("epoch"))]
        num_epochs = math.ceil(max(logged, default=0.0) - 1e-6)
    after = evaluation_after_epochs(log_history)
    rows = []
    for epoch in sorted(set(range(1, num_epochs + 1)) | set(metrics)):
        values = metrics.get(epoch, {})
        evaluation = after.get(epoch)
        eval_epoch = evaluation["epoch"] if evaluation is not None else None
        rows.append(EpochRow(epoch, drawn_from(values), values, evaluation, eval_epoch))
    return rows


def band_cell(metrics: dict[str, float]) -> str:
    """The band as the tables write it: `[lower, upper]`, or `—` without one."""
    if not (is_finite_number(metrics.get("zpd/band_lower")) and is_finite_number(metrics.get("zpd/band_upper"))):
        return MISSING
    return f"[{format_number(metrics['zpd/band_lower'])}, {format_number(metrics['zpd/band_upper'])}]"


def table_header(rows: Iterable[EpochRow], eval_names: Sequence[str]) -> list[str]:
    """The columns: epoch, drawn from, the zone columns (when any epoch has a zone), then the evaluation metrics."""
    has_zones = any(row.metrics and not row.metrics.get("zpd/uniform") for row in rows)
    header = ["epoch", "drawn from"]
    if has_zones:
        header += [name for name, _, _ in ZONE_COLUMNS]
    return header + [name.removeprefix("eval_").replace("_", " ") for name in eval_names]


def table_cells(row: EpochRow, header: Sequence[str], eval_names: Sequence[str]) -> list[str]:
    """The cells of one row, for the columns of `table_header`."""
    cells = [str(row.epoch), row.drawn_from]
    if "pool PPL" in header:
        for _, key, percent in ZONE_COLUMNS:
            cells.append(band_cell(row.metrics) if key is None else format_number(row.metrics.get(key), percent))
    for name in eval_names:
        value = row.evaluation.get(name) if row.evaluation is not None else None
        cell = format_number(value)
        if value is not None and row.eval_epoch is not None and abs(row.eval_epoch - row.epoch) > 0.01:
            cell += f" (at epoch {row.eval_epoch:.2f})"
        cells.append(cell)
    return cells


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    """A markdown table; every cell goes through [`format_number`] unless it is a string already."""

    def cell(value: Any) -> str:
        text = value if isinstance(value, str) else format_number(value)
        return text.replace("|", "\\|").replace("\n", " ")  # a pipe would split the cell, a newline end the row

    lines = ["| " + " | ".join(cell(name) for name in header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table for a terminal: columns padded to their widest cell, a rule under the header."""
    widths = [max(len(str(cells[i])) for cells in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(c).ljust(w) if i == 1 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    lines = [line(header), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    return "\n".join(lines + [line(cells) for cells in rows])


def render_epoch_table(
    log_history: Sequence[dict[str, Any]],
    epoch_metrics: dict[int, dict[str, float]] | None = None,
    num_epochs: int | None = None,
    style: str = "markdown",
) -> str:
    """The per-epoch table as markdown (report, cards) or plain text (the CLI summary)."""
    rows = epoch_rows(log_history, epoch_metrics, num_epochs)
    eval_names = eval_metric_names(log_history)
    header = table_header(rows, eval_names)
    cells = [table_cells(row, header, eval_names) for row in rows]
    if style == "text":
        return text_table(header, cells)
    return "\n".join(markdown_table(header, cells))
