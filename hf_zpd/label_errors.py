"""The label audit: every training example of a classifier ranked by how likely its label is wrong, from a run's record
at no extra cost, or from a file of `hf-zpd score`.

Every epoch's training passes measure each example when the epoch draws it, before the step that trains on it (the
record's `train_*` columns), with the classifier's class probabilities. The audit averages them over the epochs that
drew the example (p-bar_i), and

    score_i   = 1 - p-bar_i(y_i)                       (the data map's confidence, turned around)
    predicted = argmax_v p-bar_i(v)                    (the class the model prefers)
    listed_i  = predicted_i != y_i                     (the list: the model prefers another class, on average)

so the ranking is the one Dataset Cartography (Swayamdipta et al., EMNLP 2020) and the small-loss criterion
(Co-teaching, Han et al., NeurIPS 2018) read: a label the model keeps disagreeing with while it learns the rest. Measured
against flipped labels in hf_zpd's study (README, "The label audit"): next to cleanlab's `find_label_issues` on
5-fold out-of-sample probabilities, at the cost of no training beyond the run itself.

`method="confident_learning"` lists and ranks with cleanlab instead (`find_label_issues` on the same averaged
probabilities, ranked by self-confidence); cleanlab is an optional dependency (`pip install cleanlab`).
`method="first_epoch"` ranks by the first epoch's training passes alone (each example's loss before the model had
trained on it: out of sample, but measured while the head was still learning).

A file of `hf-zpd score` (one scoring pass of a trained model) is ranked by its loss; its list is the examples whose
predicted class is not their label when the file has the class probabilities, else the high-loss mode of each class's
loss mixture (`out_of_reach="high_loss"`'s rule).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .record import RECORD_NAME, CurriculumRecord
from .selection import high_loss_flags

AUDIT_METHODS = ("training_passes", "confident_learning", "first_epoch")
SCORE_COMMAND = "hf-zpd score --model_name_or_path RUN_DIR --output scores.parquet"

_WHY = {
    "training_passes": "the class the model predicts, on average over the training passes, is not the label",
    "confident_learning": "cleanlab's find_label_issues on the training passes' averaged class probabilities",
    "first_epoch": "the class the model predicted in the first epoch's training pass is not the label",
    "scores": "the scored model predicts another class than the label",
    "high_loss": "in the high-loss mode of its class's loss mixture",
}


@dataclass(frozen=True)
class LabelAudit:
    """Every example's audit, in dataset order.

    Args:
        score (`np.ndarray` of shape `(N,)`): how likely the label is wrong, higher first (NaN: never measured).
        predicted (`np.ndarray` of int, shape `(N,)`): the class the model prefers (-1: unknown).
        listed (`np.ndarray` of bool, shape `(N,)`): the audit's list.
        labels (`np.ndarray` of int, shape `(N,)`): the given labels.
        method (`str`): how it was made (one of `AUDIT_METHODS`, `"scores"` or `"high_loss"` for a score file).
        epochs (`list[int]`): the epochs whose training passes it read (empty for a score file).
    """

    score: np.ndarray
    predicted: np.ndarray
    listed: np.ndarray
    labels: np.ndarray
    method: str
    epochs: list[int]

    @property
    def why(self) -> str:
        return _WHY[self.method]

    def ranking(self) -> np.ndarray:
        """The measured examples, most likely mislabelled first (ties: the lower index first)."""
        measured = np.flatnonzero(np.isfinite(self.score))
        return measured[np.lexsort((measured, -self.score[measured]))]


def averaged_probabilities(probabilities: np.ndarray) -> np.ndarray:
    """The mean of stacked class probabilities `(E, N, K)` over the passes that measured each example (NaN rows are
    passes that did not draw it); NaN where none did."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    measured = np.isfinite(probabilities).all(axis=2, keepdims=True)  # (E, N, 1)
    count = measured.sum(axis=0)  # (N, 1)
    total = np.where(measured, probabilities, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / count, np.nan)


def audit_from_probabilities(
    probabilities: np.ndarray, labels: np.ndarray, method: str = "training_passes", epochs: list[int] | None = None
) -> LabelAudit:
    """The audit of averaged class probabilities `(N, K)` and integer `labels` (see the module docstring).

    With `method="confident_learning"`, cleanlab's `find_label_issues` lists and its self-confidence ranks (the same
    order as `1 - p(y)`).
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    measured = np.isfinite(probabilities).all(axis=1) & (labels >= 0)
    score = np.full(labels.size, np.nan)
    rows = np.flatnonzero(measured)
    score[rows] = 1.0 - probabilities[rows, labels[rows]]
    predicted = np.full(labels.size, -1, dtype=np.int64)
    predicted[rows] = probabilities[rows].argmax(axis=1)
    listed = measured & (predicted != labels)
    if method == "confident_learning":
        filter_module = _cleanlab_filter()
        listed = np.zeros(labels.size, dtype=bool)
        if rows.size:
            listed[rows] = filter_module.find_label_issues(labels[rows], probabilities[rows])
    return LabelAudit(score, predicted, listed, labels, method, list(epochs or []))


def audit_labels(record: CurriculumRecord, method: str = "training_passes") -> LabelAudit:
    """The label audit of a run's record, from its training passes.

    Args:
        record ([`CurriculumRecord`]): a classifier's record (hf_zpd 0.4 or later records the training passes).
        method (`str`, *optional*, defaults to `"training_passes"`): one of `AUDIT_METHODS`.

    Raises:
        `ValueError`: an unknown method; a record without integer class labels (a language model, or float labels);
            or without training passes with class probabilities (a replayed run, a record of hf_zpd 0.3 or older, or
            a classifier of more than 128 classes): the message names `hf-zpd score`, which scores a trained model.
        `ImportError`: `method="confident_learning"` without cleanlab, with the install line.
    """
    if method not in AUDIT_METHODS:
        raise ValueError(f"Unknown label audit method {method!r}: use one of {AUDIT_METHODS}.")
    if record.labels is None or not (record.labels >= 0).any():
        raise ValueError(
            "The label audit needs a classifier's integer class labels, but this record has none: the run trained a "
            "language model, or a dataset without a label column, or with float labels (regression, multi-label). "
            "There is nothing to audit."
        )
    epochs = sorted(epoch for epoch, (table, _) in record.training_passes.items() if table.probabilities is not None)
    if not epochs:
        raise ValueError(
            f"The record {record.source or ''} has no training passes with class probabilities to audit (a replayed "
            "run, a record written before hf_zpd 0.4, or a classifier of more than 128 classes). Score the trained "
            f"model instead: `{SCORE_COMMAND}`, then `hf-zpd label-errors scores.parquet`."
        )
    if method == "first_epoch":
        epochs = epochs[:1]
    stacked = np.stack([record.training_passes[epoch][0].probabilities for epoch in epochs])
    return audit_from_probabilities(averaged_probabilities(stacked), record.labels, method, epochs)


def audit_scores(scores) -> LabelAudit:
    """The label audit of `hf-zpd score`'s output (a parquet path or `ZPDTrainer.score_dataset`'s dataset).

    Raises:
        `ValueError`: the file lacks `zpd_example_index` and `loss`, or has no integer `label` column.
    """
    import datasets

    if isinstance(scores, (str, os.PathLike)):
        scores = datasets.Dataset.from_parquet(os.fspath(scores))
    columns = scores.column_names
    if "loss" not in columns or "zpd_example_index" not in columns:
        raise ValueError("The scores need the columns 'zpd_example_index' and 'loss' (the output of hf-zpd score).")
    if "label" not in columns:
        raise ValueError(
            "The label audit needs each example's class, but the scores have no 'label' column: they were made on a "
            "dataset without integer class labels (a language model, or float labels), so there is nothing to audit."
        )
    size = len(scores)
    position = np.asarray(scores["zpd_example_index"], dtype=np.int64)
    labels = np.full(size, -1, dtype=np.int64)
    labels[position] = np.asarray(scores["label"], dtype=np.int64)
    loss = np.full(size, np.nan)
    loss[position] = np.asarray(scores["loss"], dtype=np.float64)
    if "probabilities" in columns:
        probabilities = np.full((size, len(scores[0]["probabilities"])), np.nan)
        probabilities[position] = np.asarray(scores["probabilities"], dtype=np.float64)
        audit = audit_from_probabilities(probabilities, labels)
        return LabelAudit(audit.score, audit.predicted, audit.listed, labels, "scores", [])
    listed, _ = high_loss_flags(loss, np.isfinite(loss), labels)
    score = 1.0 - np.exp(-loss)  # 1 - p(y): the same order as the loss
    return LabelAudit(score, np.full(size, -1, dtype=np.int64), listed, labels, "high_loss", [])


def likely_label_errors(
    source,
    dataset=None,
    text_column: str | None = None,
    method: str = "training_passes",
    listed_only: bool = False,
    label_names: list[str] | None = None,
):
    """The label audit as a table: every measured training example, most likely mislabelled first.

    Args:
        source (`CurriculumRecord`, `str` or `datasets.Dataset`): a run's record (or its folder or file), or the
            scores of `hf-zpd score` (a parquet path, or `ZPDTrainer.score_dataset`'s dataset).
        dataset (`datasets.Dataset` or map-style dataset, *optional*): the training set, for the text column.
        text_column (`str`, *optional*): the dataset's column to show beside each example.
        method (`str`, *optional*, defaults to `"training_passes"`): for a record, one of `AUDIT_METHODS`.
        listed_only (`bool`, *optional*, defaults to `False`): only the audit's list, not the whole ranking.
        label_names (`list[str]`, *optional*): class names, for the `label_name` and `predicted_name` columns.

    Returns:
        `pandas.DataFrame` with the columns `rank` (1 = most likely mislabelled), `index`, `example_id` (when known),
        `label`, `predicted` (the class the model prefers; -1 when unknown), `score` (higher: more likely wrong),
        `listed` (on the audit's list), `why`, the names when given, and `text_column` (when given).

    Example:

    ```python
    >>> errors = likely_label_errors("runs/hf-zpd-train", dataset=raw_train, text_column="text")  # doctest: +SKIP
    >>> errors[errors.listed].head()  # doctest: +SKIP
    ```
    """
    import pandas as pd

    record = _as_record(source)
    ids = None
    if record is not None:
        audit, ids = audit_labels(record, method), record.example_ids
    else:
        audit = audit_scores(source)
        ids = _score_ids(source)
    order = audit.ranking()
    if listed_only:
        order = order[audit.listed[order]]
    frame = {"rank": np.arange(1, order.size + 1), "index": order}
    if ids is not None:
        frame["example_id"] = [ids[i] for i in order]
    frame["label"] = audit.labels[order]
    frame["predicted"] = audit.predicted[order]
    if label_names is not None:
        frame["label_name"] = [label_names[i] for i in audit.labels[order]]
        frame["predicted_name"] = [label_names[i] if i >= 0 else "" for i in audit.predicted[order]]
    frame["score"] = audit.score[order]
    frame["listed"] = audit.listed[order]
    frame["why"] = np.where(audit.listed[order], audit.why, "")
    if dataset is not None and text_column is not None:
        if text_column not in (getattr(dataset, "column_names", None) or dataset[0]):
            raise ValueError(f"The dataset has no column {text_column!r} to show beside the examples.")
        frame[text_column] = [dataset[int(i)][text_column] for i in order]
    return pd.DataFrame(frame)


def _cleanlab_filter():
    try:
        import cleanlab.filter
    except ImportError as error:
        raise ImportError(
            "method='confident_learning' uses cleanlab, which is not installed: `pip install 'hf_zpd[audit]'` "
            "(cleanlab 2.9.0, the version hf_zpd is tested with), or `pip install cleanlab`."
        ) from error
    return cleanlab.filter


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


def _score_ids(source) -> np.ndarray | None:
    import datasets

    scores = datasets.Dataset.from_parquet(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else source
    id_columns = [c for c in ("id", "idx", "example_id", "guid") if c in scores.column_names]
    if not id_columns:
        return None
    ids = np.empty(len(scores), dtype=object)
    ids[np.asarray(scores["zpd_example_index"], dtype=np.int64)] = scores[id_columns[0]]
    return ids
