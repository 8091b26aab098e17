"""Reference scores: a reference model's per-example scores of the training set, checked against it.

A reference model is RHO-LOSS's "holdout model" (Mindermann et al., ICML 2022) and Vygotsky's "more knowledgeable
other": its loss on an example says whether the example can be learnt at all. hf_zpd reads it in two ways: the
reducible loss, the learner's loss minus the reference's (`difficulty_mode="reducible"`), and an out-of-reach rule on
the reference's losses alone (`out_of_reach="reference"`). The scores come from `hf-zpd score` (or
`ZPDTrainer.score_dataset`) run once with the reference model, or from a model passed to the trainer, which scores
the training set at train start.

This module reads such a file and checks it against the training set before any training step: the same number of
examples, the same ids (matched by id when both have an id column, else by position), the same labels, and, at the
first training batch, the same number of supervised tokens per example (another tokenizer or other labels would
change it). Pure numpy and pyarrow; `check_reference_settings` checks the settings that read a reference at
construction.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow.parquet as pq
from transformers.utils import logging

from .scoring import SCORE_COLUMNS, ScoreTable

logger = logging.get_logger(__name__)

INDEX_COLUMN_NAME = "zpd_example_index"
_REQUIRED = (INDEX_COLUMN_NAME, "loss", "confidence", "entropy", "num_tokens")


def check_reference_settings(args, reference_model, trainer_name: str) -> None:
    """At construction: settings that read a reference without one are refused, and a reference that no setting
    reads is named in a warning (it is given for a reason; leaving it unread without a word would be a silent no-op).

    Args:
        args (`ZPDArguments`): the trainer's arguments.
        reference_model (`nn.Module`, *optional*): the trainer's `reference_model`.
        trainer_name (`str`): the trainer's class name, for the messages.
    """
    if args.needs_reference and reference_model is None and args.reference_scores is None:
        raise ValueError(
            f"difficulty_mode={args.difficulty_mode!r} with out_of_reach={args.out_of_reach!r} reads a reference "
            "model's scores, and none was given: pass reference_scores (a file of `hf-zpd score` run with the "
            "reference model on this training set) or reference_model=... to the trainer."
        )
    if args.needs_reference:
        return
    # Token selection reads a reference model too, but not reference scores.
    unread = [name for name, given in (("reference_model", reference_model is not None
                                        and args.token_selection_fraction is None),
                                       ("reference_scores", args.reference_scores is not None)) if given]  # fmt: skip
    if unread:
        logger.warning(
            f"{trainer_name}: {' and '.join(unread)} {'are' if len(unread) > 1 else 'is'} set, but nothing reads it "
            f"with out_of_reach={args.out_of_reach!r} and difficulty_mode={args.difficulty_mode!r}. Set "
            "out_of_reach='reference' to leave out the examples in the high mode of the reference's losses (likely "
            "label errors), or difficulty_mode='reducible' to rank by the learner's loss minus the reference's."
        )


def read_reference_scores(
    path: str,
    dataset_size: int,
    example_ids: np.ndarray | None = None,
    id_column: str | None = None,
    labels: np.ndarray | None = None,
) -> ScoreTable:
    """The reference scores in `path` (a parquet file of `hf-zpd score`), in training-set order.

    Args:
        path (`str`): the parquet file.
        dataset_size (`int`): the training set's size.
        example_ids (`np.ndarray`, *optional*): the training set's ids (from `id_column`), to match rows by id.
        id_column (`str`, *optional*): the name of the training set's id column.
        labels (`np.ndarray` of int, *optional*): the training set's class labels, compared with the file's `label`.

    Returns:
        [`ScoreTable`]: one row per training example.

    Raises:
        `ValueError`: the file is missing, unreadable, or does not fit the training set; the message names the file,
            what differs and the fix.
    """
    fix = (
        "Score the training set itself with the reference model (hf-zpd score --model_name_or_path REFERENCE "
        "--dataset SAME_DATA --output FILE.parquet), with the same tokenizer and labels."
    )
    if not os.path.isfile(path):
        raise ValueError(f"The reference scores {path!r} do not exist. {fix}")
    try:
        table = pq.read_table(path)
    except Exception as error:  # any parse failure means a damaged or foreign file
        raise ValueError(
            f"The reference scores {path} are unreadable ({type(error).__name__}: {error}). {fix}"
        ) from error
    missing = [name for name in _REQUIRED if name not in table.column_names]
    if missing:
        raise ValueError(f"The reference scores {path} have no column(s) {missing}: not a file of hf-zpd score. {fix}")
    if table.num_rows != dataset_size:
        raise ValueError(
            f"The reference scores {path} have {table.num_rows} rows, but the training set has {dataset_size} "
            f"examples. {fix}"
        )
    columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
    position = np.asarray(columns[INDEX_COLUMN_NAME], dtype=np.int64)
    if id_column is not None and example_ids is not None and id_column in columns:
        # Rows are matched by id: the file may list them in another order.
        where = {_key(value): i for i, value in enumerate(example_ids)}
        position = np.full(table.num_rows, -1, dtype=np.int64)
        unknown = []
        for row, value in enumerate(columns[id_column]):
            position[row] = where.get(_key(value), -1)
            if position[row] < 0:
                unknown.append(value)
        if unknown:
            raise ValueError(
                f"The reference scores {path} have {len(unknown)} ids that the training set's column {id_column!r} "
                f"does not (e.g. {unknown[0]!r}): they score another dataset. {fix}"
            )
    if sorted(position.tolist()) != list(range(dataset_size)):
        raise ValueError(
            f"The reference scores {path} do not hold each of the {dataset_size} training examples exactly once "
            f"(by {INDEX_COLUMN_NAME}). {fix}"
        )
    if labels is not None and "label" in columns:
        theirs = np.empty(dataset_size, dtype=np.int64)
        theirs[position] = np.asarray(columns["label"], dtype=np.int64)
        different = np.flatnonzero(theirs != labels)
        if different.size:
            first = int(different[0])
            raise ValueError(
                f"The reference scores {path} were computed with other labels: {different.size} examples differ (e.g. "
                f"example {first}: label {theirs[first]} there, {labels[first]} here). {fix}"
            )
    vocab_size = int(columns["vocab_size"][0]) if "vocab_size" in columns and table.num_rows else 0
    scores = ScoreTable.empty(dataset_size, vocab_size)
    for name in SCORE_COLUMNS:
        getattr(scores, name)[position] = np.asarray(columns[name], dtype=np.float64)
    return scores


def check_reference_fits(reference: ScoreTable, index: np.ndarray, num_tokens: np.ndarray, vocab_size: int) -> None:
    """Raises a `ValueError` if a training batch's examples were scored over another vocabulary, or with other
    numbers of supervised tokens (another tokenizer, other labels), than the reference's."""
    fix = "Score the training set with the reference model through the same tokenizer and collator (hf-zpd score)."
    if reference.vocab_size and vocab_size and reference.vocab_size != vocab_size:
        raise ValueError(
            f"The reference scores were computed over {reference.vocab_size} classes or tokens, but the model being "
            f"trained predicts {vocab_size}: another tokenizer or label set. {fix}"
        )
    theirs = reference.num_tokens[index]
    different = np.flatnonzero(np.isfinite(theirs) & (theirs != num_tokens))
    if different.size:
        example = int(index[different[0]])
        raise ValueError(
            f"The reference scores count {int(theirs[different[0]])} supervised tokens for training example "
            f"{example}, but its training batch has {int(num_tokens[different[0]])}: the reference was scored with "
            f"another tokenizer, collator or labels. {fix}"
        )


def _key(value):
    """An id as a dictionary key: ints and their strings alike, as the record compares ids."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        value = value.item()
    return str(value)


__all__ = ["check_reference_fits", "read_reference_scores"]
