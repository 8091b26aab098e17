"""Real training subprocesses, SIGKILLed in the middle of a scoring pass or of a checkpoint save, then resumed.

The resumed run must finish with the zones and the bitwise-identical weights of a run that was never interrupted,
and no curriculum state file may ever be half-written. Two fresh processes with the same seed must agree bitwise.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hf_zpd.record import RECORD_NAME, CurriculumRecord
from hf_zpd.state import STATE_NAME, TrainingState, last_complete_checkpoint

TESTS = Path(__file__).resolve().parent
WORKER = TESTS / "kill_worker.py"
DATASET_SIZE = 48

pytestmark = pytest.mark.slow


def environment() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")


def run_to_the_end(output_dir: Path, *flags: str) -> dict:
    result_file = output_dir.parent / f"{output_dir.name}-result.json"
    command = [sys.executable, str(WORKER), str(output_dir), str(result_file), *flags]
    completed = subprocess.run(command, env=environment(), capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(result_file.read_text())


def run_and_kill(output_dir: Path, *flags: str) -> None:
    """Starts a run, waits until it pauses at the chosen point, and SIGKILLs it there."""
    command = [sys.executable, str(WORKER), str(output_dir), str(output_dir) + "-unused.json", *flags]
    process = subprocess.Popen(command, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = output_dir / "paused"
    deadline = time.monotonic() + 300
    while not marker.exists():
        if process.poll() is not None:
            pytest.fail(f"the run ended before pausing: {process.stderr.read().decode()[-4000:]}")
        assert time.monotonic() < deadline, "the run never reached the pause point"
        time.sleep(0.1)
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=60)
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL
    marker.unlink()


def assert_every_state_file_is_whole(output_dir: Path) -> None:
    for state_file in output_dir.glob(f"checkpoint-*/{STATE_NAME}"):
        assert TrainingState.load(str(state_file.parent), DATASET_SIZE) is not None, state_file
        assert CurriculumRecord.load(str(state_file.parent / RECORD_NAME)).dataset_size == DATASET_SIZE


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    return run_to_the_end(tmp_path_factory.mktemp("reference") / "run")


def test_same_seed_same_curriculum_and_weights_in_two_fresh_processes(uninterrupted, tmp_path):
    again = run_to_the_end(tmp_path / "again")
    assert again == uninterrupted
    assert sorted(uninterrupted["zones"]) == ["2", "3"] and uninterrupted["global_step"] == 18


def test_killed_in_the_middle_of_a_scoring_pass(uninterrupted, tmp_path):
    output_dir = tmp_path / "run"
    run_and_kill(output_dir, "--pause-in-scoring", "2")  # the pass at the end of epoch 2, after checkpoint-12
    assert_every_state_file_is_whole(output_dir)
    assert last_complete_checkpoint(str(output_dir)).endswith("checkpoint-12")
    resumed = run_to_the_end(output_dir, "--resume")
    assert resumed == uninterrupted


def test_killed_in_the_middle_of_writing_a_checkpoint(uninterrupted, tmp_path):
    output_dir = tmp_path / "run"
    run_and_kill(
        output_dir, "--pause-in-checkpoint", "3"
    )  # checkpoint-12: curriculum and weights written, not the rest
    assert_every_state_file_is_whole(output_dir)
    incomplete = output_dir / "checkpoint-12"
    assert (incomplete / "model.safetensors").exists() and not (incomplete / "trainer_state.json").exists()
    assert last_complete_checkpoint(str(output_dir)).endswith("checkpoint-8")
    resumed = run_to_the_end(output_dir, "--resume")
    assert resumed == uninterrupted
