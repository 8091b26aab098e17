"""`ZPDGRPOTrainer` with two real processes (torchrun, gloo on CPU): the same plans everywhere, TRL's layout across
the ranks, the composite's sharded forward, and a bitwise resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from test_multiprocess import free_port

TESTS = Path(__file__).resolve().parent

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo_two_processes")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command += [str(TESTS / "grpo_multiprocess_worker.py"), str(out)]
    result = subprocess.run(command, env=env, cwd=TESTS, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_two_gloo_processes_ran(ranks):
    assert [rank["rank"] for rank in ranks] == [0, 1]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    assert all(rank["distributed_type"] == "DistributedType.MULTI_CPU" for rank in ranks)


def test_every_process_plans_the_same_rounds_from_the_same_features(ranks):
    assert ranks[0]["plans"] == ranks[1]["plans"] and len(ranks[0]["plans"]) >= 6
    assert ranks[0]["features"] == ranks[1]["features"], "the composite's forward is sharded, then gathered"
    assert ranks[0]["observed"] == ranks[1]["observed"]


def test_each_process_generates_its_slice_of_every_round(ranks):
    """12 rows per rank (6 prompts x 4 completions... 3 per rank), rank 0 the first half of the round's rows."""
    for step, (first, second) in enumerate(zip(ranks[0]["local"], ranks[1]["local"], strict=True)):
        rows = [p for p in ranks[0]["plans"][str(step)] for _ in range(4)]
        assert first + second == rows


def test_a_resume_ends_bitwise_with_the_same_plans(ranks):
    for rank in ranks:
        assert rank["resumed_digest"] == rank["digest"]
        for round, prompts in rank["resumed_plans"].items():
            assert prompts == rank["plans"][round]
