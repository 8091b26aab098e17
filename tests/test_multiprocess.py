"""Two real processes (torchrun, gloo on CPU): the same curriculum as one process, disjoint draws, bitwise resume.

One torchrun launch runs `multiprocess_worker.py`; the tests below read what each rank recorded.
`accelerate launch --cpu --num_processes 2` silently starts ONE process in accelerate 1.15, hence torchrun, and
hence the world-size assertion.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from builders import build_tokenizer, causal_lm_dataset, tiny_gpt2
from multiprocess_worker import NUM_EXAMPLES, RecordingZPDTrainer, arguments, build
from transformers import DataCollatorForSeq2Seq

from hf_zpd import ZPDTrainer

TESTS = Path(__file__).resolve().parent
BATCH = 4

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=f"{TESTS}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    command += [str(TESTS / "multiprocess_worker.py"), str(out)]
    result = subprocess.run(command, env=env, cwd=TESTS, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-5000:]
    return [json.loads((out / f"rank{rank}.json").read_text()) for rank in range(2)]


def test_two_gloo_processes_ran(ranks):
    """Two distinct ranks of one gloo group, as the Trainer sees them: what every other test here relies on."""
    assert [rank["rank"] for rank in ranks] == [0, 1]
    assert [rank["world_size"] for rank in ranks] == [2, 2]
    assert [rank["backend"] for rank in ranks] == ["gloo", "gloo"]
    assert all(rank["distributed_type"] == "DistributedType.MULTI_CPU" for rank in ranks)
    assert ranks[0]["seen"]["1"] != ranks[1]["seen"]["1"]  # each trained on its own batches


def test_gathered_scores_equal_one_process_scores(ranks, tmp_path):
    """The pass before training scores the initial weights, so 1 and 2 processes must agree to float tolerance."""
    single = build(RecordingZPDTrainer, arguments(str(tmp_path), max_steps=1), build_tokenizer())
    single.train()
    assert single.args.world_size == 1
    for name in ("loss", "confidence", "entropy", "num_tokens"):
        for rank in ranks:
            np.testing.assert_allclose(rank["tables"]["1"][name], single.tables[1][name], rtol=0, atol=1e-5)
    assert not np.isnan(single.tables[1]["loss"]).any(), "every example must be scored exactly once"


def test_every_rank_holds_the_same_tables_and_zones(ranks):
    assert ranks[0]["tables"] == ranks[1]["tables"]
    assert ranks[0]["zones"] == ranks[1]["zones"]
    assert ranks[0]["draws"] == ranks[1]["draws"] and ranks[0]["counts"] == ranks[1]["counts"]
    assert sorted(ranks[0]["zones"]) == ["1", "2", "3"]


def test_ranks_draw_disjoint_shares_of_the_epoch_draw(ranks):
    """Rank r trains on global batches r, r + 2, ...; together they are the epoch's draw, each position once.

    With 44 samples in batches of 4 there are 11 global batches: accelerate's even_batches completes the 12th
    with the draw's first samples, exactly as for the plain Trainer.
    """
    for epoch, draw in ranks[0]["draws"].items():
        assert len(draw) == NUM_EXAMPLES
        batches = [draw[i : i + BATCH] for i in range(0, len(draw), BATCH)]
        batches.append(draw[:BATCH])  # even_batches padding
        for rank, record in enumerate(ranks):
            expected = [index for batch in batches[rank::2] for index in batch]
            assert record["seen"][epoch] == expected, f"epoch {epoch}, rank {rank}"
        real_positions = sum(len(b) for b in batches[:-1])
        assert real_positions == len(draw)  # each position of the draw goes to exactly one rank


def test_epoch_draws_are_the_planned_counts(ranks):
    """What the ranks trained on together is each epoch's planned draw counts, example by example."""
    for epoch, draw in ranks[0]["draws"].items():
        assert np.bincount(draw, minlength=NUM_EXAMPLES).tolist() == ranks[0]["counts"][epoch]


def test_schedule_and_steps_equal_plain_trainer(ranks):
    for rank in ranks:
        assert rank["global_step"] == rank["plain_global_step"] == 18
        assert rank["learning_rates"] == rank["plain_learning_rates"]


def test_resume_mid_epoch_with_two_processes_is_bitwise_identical(ranks):
    for rank in ranks:
        for step, resumed in rank["resumed"].items():
            assert resumed["digest"] == rank["digest"], f"resumed from checkpoint-{step}"
            assert resumed["zones"] == rank["zones"], f"resumed from checkpoint-{step}"
            assert resumed["counts"] == rank["counts"], f"resumed from checkpoint-{step}"


def test_processes_with_different_training_sets_fail_loudly(ranks):
    for rank in ranks:
        assert rank["mismatch_error"] is not None
        assert "training set differs between processes" in rank["mismatch_error"]


def test_training_pass_source_merges_the_ranks_statistics(ranks, tmp_path):
    """A frozen model's training passes, split over 2 ranks, give the table a 1-process scoring pass gives."""
    single = build(RecordingZPDTrainer, arguments(str(tmp_path), max_steps=1), build_tokenizer(), dropout=0.0)
    single.train()  # the pass before training scores the initial weights
    for rank in ranks:
        assert rank["training_pass_frozen_table"] == ranks[0]["training_pass_frozen_table"]
        for name in ("loss", "confidence", "entropy", "num_tokens"):
            np.testing.assert_allclose(
                rank["training_pass_frozen_table"][name], single.tables[1][name], rtol=0, atol=1e-5, err_msg=name
            )


def test_training_pass_source_resumes_mid_epoch_bitwise(ranks):
    for rank in ranks:
        run = rank["training_pass"]
        assert sorted(run["zones"]) == ["2", "3"]
        for step, resumed in run["resumed"].items():
            assert resumed == {"digest": run["digest"], "zones": run["zones"]}, f"resumed from checkpoint-{step}"


def test_a_uniform_first_epoch_trains_the_plain_trainers_batches_on_every_rank(ranks):
    """Without a pass before training, epoch 1 is drawn in the plain Trainer's order: each rank trains the very
    batches (token for token) that the plain Trainer's same rank trains, with the same seed."""
    for rank in ranks:
        assert len(rank["plain_first_epoch_inputs"]) == 6
        assert rank["uniform_first_epoch_inputs"] == rank["plain_first_epoch_inputs"]
    assert ranks[0]["plain_first_epoch_inputs"] != ranks[1]["plain_first_epoch_inputs"]


def test_a_reference_models_scores_are_the_same_with_one_and_two_processes(ranks, tmp_path):
    """The reference's pass at train start is sharded over the ranks and gathered: every rank holds the table that
    one process computes."""
    tokenizer = build_tokenizer()
    single = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer), seed=5),
        reference_model=tiny_gpt2(len(tokenizer), seed=9),
        args=arguments(str(tmp_path), max_steps=1, difficulty_mode="reducible"),
        train_dataset=causal_lm_dataset(tokenizer, NUM_EXAMPLES, prompt_tokens=2),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    single.train()
    assert single.args.world_size == 1
    assert ranks[0]["reference_table"] == ranks[1]["reference_table"]
    for name in ("loss", "confidence", "entropy"):
        expected = getattr(single.curriculum.reference, name)
        assert np.isfinite(expected).all()
        np.testing.assert_allclose(ranks[0]["reference_table"][name], expected, rtol=0, atol=1e-5, err_msg=name)
