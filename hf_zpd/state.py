"""The checkpoint state: what a resumed run needs beyond the curriculum record.

A checkpoint folder holds the record (`zpd_curriculum.parquet`: every epoch's draws, the zones, the scoring passes and
the training passes of finished epochs, the one source of those) and this small file, `zpd_state.safetensors`: the
running perplexity's moving average, the training passes of the epoch it was saved in, and a reference model's scores
when the run uses one (so a resumed run does not score again, and uses the very scores it started with). Arrays are
safetensors and the rest JSON in its metadata (no pickle), written through a temporary file and a rename, so a reader
never sees half a file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save as save_safetensors
from transformers.utils import logging

from ._io import atomic_write_bytes
from .scoring import SCORE_COLUMNS, ScoreTable

logger = logging.get_logger(__name__)

STATE_NAME = "zpd_state.safetensors"
STATE_FORMAT_VERSION = 2
# The Trainer's checkpoint folder prefix and last file (transformers 5.24: `PREFIX_CHECKPOINT_DIR`,
# `TRAINER_STATE_NAME`); spelled out here so the report does not import the trainer. tests/test_state.py checks them.
CHECKPOINT_PREFIX = "checkpoint"
TRAINER_STATE_NAME = "trainer_state.json"


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The highest-numbered `checkpoint-N` folder in `output_dir` that the Trainer finished writing.

    `trainer_state.json` is the last file `Trainer._save_checkpoint` writes (transformers 5.24), so a folder with a
    readable one is complete. Incomplete folders (a run killed while saving) are skipped with a warning.
    """
    if not os.path.isdir(output_dir):
        return None
    candidates = []
    for name in os.listdir(output_dir):
        prefix, _, step = name.partition("-")
        if prefix == CHECKPOINT_PREFIX and step.isdigit() and os.path.isdir(os.path.join(output_dir, name)):
            candidates.append((int(step), os.path.join(output_dir, name)))
    for _, folder in sorted(candidates, reverse=True):
        try:
            with open(os.path.join(folder, TRAINER_STATE_NAME)) as handle:
                json.load(handle)
            return folder
        except (OSError, ValueError):
            logger.warning(f"Skipping {folder}: it has no readable {TRAINER_STATE_NAME} (a save was interrupted).")
    return None


@dataclass
class TrainingState:
    """The part of a run's curriculum state that is not in its record.

    Args:
        dataset_size (`int`): the training set's size, checked on resume.
        running_loss (`float`, *optional*): the moving average of training losses behind the running perplexity.
        training_pass_scores (`tuple[ScoreTable, np.ndarray, int]`, *optional*): the training passes of the epoch the
            checkpoint was saved in, the global step of each row (NaN where none), and that epoch.
        reference (`ScoreTable`, *optional*): a reference model's scores of the training set.
    """

    dataset_size: int
    running_loss: float | None = None
    training_pass_scores: tuple[ScoreTable, np.ndarray, int | None] | None = None
    reference: ScoreTable | None = None

    def save(self, folder: str) -> str:
        """Writes the state into `folder` atomically and returns the file's path."""
        arrays: dict[str, np.ndarray] = {}
        vocab_size = epoch = None
        if self.training_pass_scores is not None:
            table, step, epoch = self.training_pass_scores
            arrays = {f"training_pass.{column}": getattr(table, column).astype(np.float64) for column in SCORE_COLUMNS}
            arrays["training_pass.step"] = step.astype(np.float64)
            if table.probabilities is not None:
                arrays["training_pass.probabilities"] = table.probabilities.astype(np.float64)
            vocab_size = table.vocab_size
        if self.reference is not None:
            arrays.update({f"reference.{c}": getattr(self.reference, c).astype(np.float64) for c in SCORE_COLUMNS})
        header = {
            "format_version": STATE_FORMAT_VERSION,
            "dataset_size": self.dataset_size,
            "running_loss": self.running_loss,
            "training_pass_vocab_size": vocab_size,
            "training_pass_epoch": epoch,
            "reference_vocab_size": None if self.reference is None else self.reference.vocab_size,
        }
        path = os.path.join(folder, STATE_NAME)
        atomic_write_bytes(path, save_safetensors(arrays, metadata={"zpd": json.dumps(header)}))
        return path

    @classmethod
    def load(cls, folder: str, dataset_size: int) -> TrainingState | None:
        """Reads the state from `folder`; `None` if the folder has none (a checkpoint of the plain Trainer).

        Raises:
            `ValueError`: the file is unreadable, of another format version, or written for a training set of
                another size.
        """
        path = os.path.join(folder, STATE_NAME)
        if not os.path.isfile(path):
            return None
        try:
            with safe_open(path, framework="numpy") as handle:
                header = json.loads(handle.metadata()["zpd"])
                arrays = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (not a dict)
        except Exception as error:  # any parse failure means a damaged file
            raise ValueError(
                f"The curriculum state {path} is unreadable ({error}). The file is damaged: resume from an earlier "
                f"checkpoint, or delete {STATE_NAME} from this folder to rescore the pool with the restored model."
            ) from error
        version = header.get("format_version")
        if version != STATE_FORMAT_VERSION:
            raise ValueError(
                f"The curriculum state {path} has format version {version}, but this hf_zpd reads version "
                f"{STATE_FORMAT_VERSION}: it was written by hf_zpd 0.1, whose epochs were drawn by another rule, so a "
                "resumed run could not continue the same curriculum. Resume it with hf_zpd 0.1, or start a new run "
                "(a new output_dir)."
            )
        if header["dataset_size"] != dataset_size:
            raise ValueError(
                f"The curriculum state {path} was written for a training set of {header['dataset_size']} examples, "
                f"but the training set now has {dataset_size}. Resume with the same train_dataset, or start a new "
                "run (a new output_dir) for the new data."
            )
        training_pass = None
        if "training_pass.step" in arrays:
            columns = [arrays[f"training_pass.{column}"] for column in SCORE_COLUMNS]
            table = ScoreTable(
                *columns,
                vocab_size=header["training_pass_vocab_size"],
                probabilities=arrays.get("training_pass.probabilities"),
            )
            training_pass = (table, arrays["training_pass.step"], header.get("training_pass_epoch"))
        reference = None
        if "reference.loss" in arrays:
            columns = [arrays[f"reference.{column}"] for column in SCORE_COLUMNS]
            reference = ScoreTable(*columns, vocab_size=header.get("reference_vocab_size") or 0)
        return cls(dataset_size, header["running_loss"], training_pass, reference)
