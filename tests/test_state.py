"""The checkpoint state file (`hf_zpd.state`): round trip, atomic write, refusal of damaged or old files."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from hf_zpd.scoring import ScoreTable
from hf_zpd.state import CHECKPOINT_PREFIX, STATE_NAME, TrainingState, last_complete_checkpoint
from hf_zpd.state import TRAINER_STATE_NAME as OUR_TRAINER_STATE_NAME

DATA = Path(__file__).resolve().parent / "data"


def test_the_checkpoint_names_are_the_trainers():
    assert (CHECKPOINT_PREFIX, OUR_TRAINER_STATE_NAME) == (PREFIX_CHECKPOINT_DIR, TRAINER_STATE_NAME)


def test_state_file_is_written_atomically_and_round_trips(tmp_path):
    table = ScoreTable.empty(5, vocab_size=7)
    table.loss[[1, 3]] = [0.5, 1.5]
    table.num_tokens[[1, 3]] = [2, 4]
    table.probabilities = np.full((5, 7), np.nan)
    table.probabilities[[1, 3]] = np.full(7, 1 / 7)
    step = np.array([np.nan, 3, np.nan, 4, np.nan])
    state = TrainingState(dataset_size=5, running_loss=1.25, training_pass_scores=(table, step, 2))
    path = state.save(str(tmp_path))
    assert os.listdir(tmp_path) == [STATE_NAME], "no temporary file may be left behind"
    # The same permissions as a file the Trainer writes with open() (mkstemp alone would give 0600).
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert os.stat(path).st_mode & 0o777 == os.stat(reference).st_mode & 0o777
    reference.unlink()
    loaded = TrainingState.load(str(tmp_path), 5)
    assert loaded.running_loss == 1.25
    got_table, got_step, got_epoch = loaded.training_pass_scores
    np.testing.assert_array_equal(got_table.loss, table.loss)
    np.testing.assert_array_equal(got_table.probabilities, table.probabilities)
    np.testing.assert_array_equal(got_step, step)
    assert got_epoch == 2, "the epoch the training passes belong to"
    assert got_table.vocab_size == 7
    assert TrainingState.load(str(tmp_path / "elsewhere"), 5) is None  # a plain Trainer checkpoint


def test_a_damaged_state_file_is_refused_naming_the_file(tmp_path):
    path = TrainingState(dataset_size=3, running_loss=0.5).save(str(tmp_path))
    Path(path).write_bytes(Path(path).read_bytes()[:20])
    with pytest.raises(ValueError, match=re.escape(path) + " is unreadable"):
        TrainingState.load(str(tmp_path), 3)


def test_a_state_file_of_another_training_set_is_refused(tmp_path):
    TrainingState(dataset_size=3).save(str(tmp_path))
    with pytest.raises(ValueError, match="written for a training set of 3 examples, but the training set now has 4"):
        TrainingState.load(str(tmp_path), 4)


def test_a_checkpoint_of_hf_zpd_0_1_is_refused_with_the_fix(tmp_path):
    """tests/data/state_format1.safetensors comes from a checkpoint written by hf_zpd 0.1 (main at 82d06c7)."""
    (tmp_path / STATE_NAME).write_bytes((DATA / "state_format1.safetensors").read_bytes())
    with pytest.raises(ValueError, match="format version 1.*written by hf_zpd 0.1.*start a new run"):
        TrainingState.load(str(tmp_path), 24)


def test_last_complete_checkpoint_skips_folders_a_kill_left_incomplete(tmp_path):
    for step, complete in ((4, True), (8, True), (12, False)):
        folder = tmp_path / f"checkpoint-{step}"
        folder.mkdir()
        if complete:
            (folder / TRAINER_STATE_NAME).write_text("{}")
    (tmp_path / "checkpoint-16").mkdir()
    (tmp_path / "checkpoint-16" / TRAINER_STATE_NAME).write_text("{half")  # killed while writing
    (tmp_path / "checkpoint-x").mkdir()
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-8")
    assert last_complete_checkpoint(str(tmp_path / "missing")) is None
