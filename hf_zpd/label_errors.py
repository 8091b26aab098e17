"""Likely label errors: the training examples a curriculum found out of reach, listed for a person to check.

An example whose loss stays in the high mode of its class's loss mixture once the model has learnt the easy patterns
is likely mislabelled (the small-loss criterion of Co-teaching and DivideMix; `out_of_reach="high_loss"`). The list
comes from a run's record (the flags of its last composed epoch, and why) or from a file of `hf-zpd score` (the rule
applied to its losses). Each row: the example's index, its id and text when known, its label, its loss, and why it
was flagged.
"""

from __future__ import annotations

import os

import numpy as np

from .record import RECORD_NAME, CurriculumRecord
from .selection import high_loss_flags

_WHY_BY_RULE = {
    "learnability_guard": "trained on, but its loss did not fall between two measurements (learnability guard)",
    "high_loss": "in the high-loss mode of its class's loss mixture (out_of_reach='high_loss')",
    "reference": "in the high-loss mode of a reference model's losses (out_of_reach='reference')",
}


def likely_label_errors(source, dataset=None, text_column: str | None = None, max_fraction: float = 0.5):
    """The likely label errors of a training set, highest loss first, as a `pandas.DataFrame`.

    Args:
        source (`CurriculumRecord`, `str` or `datasets.Dataset`): a run's record (or its folder or file), whose last
            epoch's out-of-reach flags are listed (if the run flagged none, the high-loss rule is applied to its
            latest scores); or the scores of `hf-zpd score` (a parquet path, or `ZPDTrainer.score_dataset`'s
            dataset), to which the high-loss rule is applied, within each label.
        dataset (`datasets.Dataset` or map-style dataset, *optional*): the training set, for the text column.
        text_column (`str`, *optional*): the dataset's column to show beside each example.
        max_fraction (`float`, *optional*, defaults to 0.5): the most of each class the high-loss rule may flag.

    Returns:
        `pandas.DataFrame` with the columns `index`, `example_id` (when known), `label` (when known), `loss`, `why`,
        and `text_column` (when given).

    Example:

    ```python
    >>> errors = likely_label_errors("runs/hf-zpd-train", dataset=raw_train, text_column="text")  # doctest: +SKIP
    >>> errors.head()  # doctest: +SKIP
    ```
    """
    import pandas as pd

    record = _as_record(source)
    if record is not None:
        index, loss, labels, ids, why = _from_record(record, max_fraction)
    else:
        index, loss, labels, ids, why = _from_scores(source, max_fraction)
    order = np.lexsort((index, -loss))
    frame = {"index": index[order]}
    if ids is not None:
        frame["example_id"] = [ids[i] for i in index[order]]
    if labels is not None:
        frame["label"] = labels[index[order]]
    frame["loss"] = loss[order]
    frame["why"] = [why] * len(order) if isinstance(why, str) else [why[i] for i in order]
    if dataset is not None and text_column is not None:
        if text_column not in (getattr(dataset, "column_names", None) or dataset[0]):
            raise ValueError(f"The dataset has no column {text_column!r} to show beside the examples.")
        frame[text_column] = [dataset[int(i)][text_column] for i in index[order]]
    return pd.DataFrame(frame)


def _as_record(source) -> CurriculumRecord | None:
    if isinstance(source, CurriculumRecord):
        return source
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if os.path.isdir(path) and os.path.isfile(os.path.join(path, RECORD_NAME)):
            return CurriculumRecord.load(os.path.join(path, RECORD_NAME))
        if os.path.isfile(path) and path.endswith(".parquet"):
            import pyarrow.parquet as pq

            from .record import METADATA_KEY

            if METADATA_KEY in (pq.read_schema(path).metadata or {}):
                return CurriculumRecord.load(path)
            return None
        raise ValueError(
            f"{path} is neither a run folder with {RECORD_NAME} nor a parquet file (a record, or the output of "
            "hf-zpd score)."
        )
    return None


def _from_record(record: CurriculumRecord, max_fraction: float):
    flagged_epochs = [epoch for epoch, draw in sorted(record.epochs.items()) if draw.out_of_reach.size]
    rule = record.settings.get(
        "out_of_reach", "learnability_guard" if record.settings.get("learnability_guard") else "none"
    )
    if flagged_epochs:
        draw = record.epochs[flagged_epochs[-1]]
        table = record.scores_for(draw.epoch)
        index = draw.out_of_reach.astype(np.int64)
        why = f"{_WHY_BY_RULE.get(rule, rule)}, at the pass after epoch {draw.scored_at}"
        return index, table.loss[index], record.labels, record.example_ids, why
    latest = record.history.latest()
    if latest is None:
        raise ValueError("The record has no scoring pass: train for at least two epochs, or score with hf-zpd score.")
    boundary, table = latest
    drawable = table.finite() & (table.num_tokens > 0)
    flags, _ = high_loss_flags(table.loss, drawable, record.labels, max_fraction)
    index = np.flatnonzero(flags)
    why = f"{_WHY_BY_RULE['high_loss']}, applied to the pass after epoch {boundary} (the run flagged none)"
    return index, table.loss[index], record.labels, record.example_ids, why


def _from_scores(source, max_fraction: float):
    import datasets

    scores = datasets.Dataset.from_parquet(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else source
    columns = scores.column_names
    if "loss" not in columns or "zpd_example_index" not in columns:
        raise ValueError("The scores need the columns 'zpd_example_index' and 'loss' (the output of hf-zpd score).")
    size = len(scores)
    position = np.asarray(scores["zpd_example_index"], dtype=np.int64)
    loss = np.full(size, np.nan)
    loss[position] = np.asarray(scores["loss"], dtype=np.float64)
    labels = None
    if "label" in columns:
        labels = np.full(size, -1, dtype=np.int64)
        labels[position] = np.asarray(scores["label"], dtype=np.int64)
    ids = None
    id_columns = [c for c in ("id", "idx", "example_id", "guid") if c in columns]
    if id_columns:
        ids = np.empty(size, dtype=object)
        ids[position] = scores[id_columns[0]]
    flags, _ = high_loss_flags(loss, np.isfinite(loss), labels, max_fraction)
    index = np.flatnonzero(flags)
    return index, loss[index], labels, ids, _WHY_BY_RULE["high_loss"]
