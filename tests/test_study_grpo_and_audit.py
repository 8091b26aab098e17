"""The measuring code of the GRPO study (`examples/grpo_study.py`, `examples/grpo_tasks.py`) and of the label audit
(`examples/label_audit.py`): the numbers the reports print, checked against values worked out by hand, and a tiny
end-to-end GRPO arm."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_study import load


@pytest.fixture(scope="module")
def grpo_study():
    return load("grpo_study")


@pytest.fixture(scope="module")
def grpo_tasks():
    return load("grpo_tasks")


def test_tokens_to_reach_a_target_interpolates_between_evaluations(grpo_study):
    curves = {"tokens": [0, 100, 200, 300], "pass@1": [0.2, 0.4, 0.6, 0.55]}
    assert grpo_study.tokens_to_reach(curves, 0.5) == pytest.approx(150.0)  # halfway from 0.4 to 0.6
    assert grpo_study.tokens_to_reach(curves, 0.2) == 0.0
    assert math.isnan(grpo_study.tokens_to_reach(curves, 0.7)), "never reached"
    assert grpo_study.interpolate_at_tokens(curves, 50) == pytest.approx(0.3)
    assert math.isnan(grpo_study.interpolate_at_tokens(curves, 400)), "beyond the run"


def test_forgetting_is_measured_on_the_prompts_mastered_at_the_start(grpo_study):
    curves = {"pool_pass_rates": [[1.0, 0.5, 1.0, 0.0], [0.9, 1.0, 0.7, 1.0]]}
    assert grpo_study.mastered_at_start_accuracy(curves) == pytest.approx(0.8)


def test_the_sweep_section_shows_each_runs_start_and_end(grpo_study):
    row = {"task": "add", "file": "addb_lr1e-4_s0.json", "pass@1": [0.344, 0.5, 0.53], "greedy": [0.37, 0.5, 0.556],
           "frac_reward_zero_std_mean": 0.728, "tokens": [0, 1000, 197661]}  # fmt: skip
    lines = grpo_study.sweep_section([row])
    assert "| add | addb_lr1e-4_s0 | 0.344 → 0.530 | 0.370 → 0.556 | 0.728 | 197,661 |" in lines
    assert grpo_study.sweep_section([]) == []


def test_the_tasks_answers_and_rewards(grpo_tasks):
    tokenizer = grpo_tasks.build_tokenizer()
    text = "kqzv>vzqk"
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text
    answers = ["132", "vzqk"]
    assert grpo_tasks.exact_match_reward(["132", "vzqk "], answers) == [1.0, 1.0]
    assert grpo_tasks.exact_match_reward(["13", "vzqx"], answers) == [0.0, 0.0]
    partial = grpo_tasks.char_match_reward(["130", "vzqk"], answers)
    assert 0.0 < partial[0] < 1.0 and partial[1] == 1.0


def test_the_label_audits_cut_and_methods(tmp_path):
    audit = load("label_audit")
    truth = np.array([1, 0, 1, 0, 0, 1], dtype=bool)
    scores = np.array([0.9, 0.8, 0.7, 0.1, np.nan, 0.2])
    precision, recall = audit._cut(scores, truth, 3)
    assert (precision, recall) == (pytest.approx(2 / 3), pytest.approx(2 / 3))
    rng = np.random.default_rng(0)
    size, classes = 60, 3
    labels = rng.integers(0, classes, size)
    passes = rng.dirichlet(np.ones(classes), size=(2, size)).astype(np.float32)
    inputs = {"labels": labels, "epochs": np.array([1, 2]), "probabilities_1": passes[0], "probabilities_2": passes[1]}
    pytest.importorskip("cleanlab")
    found = audit.methods(inputs, cv=passes[1].astype(np.float64))
    assert set(found) == {"run", "run_first_epoch", "cleanlab_first_epoch", "cleanlab_run", "cleanlab_cv"}
    score, listed, trainings = found["run"]
    mean = passes.astype(np.float64).mean(axis=0)
    np.testing.assert_allclose(score, 1 - mean[np.arange(size), labels], atol=1e-12)
    np.testing.assert_array_equal(listed, mean.argmax(axis=1) != labels)
    assert trainings == 1.0 and found["cleanlab_cv"][2] == 5.0


@pytest.mark.slow
def test_a_grpo_arm_runs_end_to_end_and_is_reported(grpo_study, grpo_tasks, tmp_path, monkeypatch):
    """A tiny warm start (20 SFT steps) and 4 GRPO steps of two arms, then the report: the same code as the study."""
    monkeypatch.setenv("HF_ZPD_CACHE", str(tmp_path / "cache"))
    task = grpo_tasks.PRESETS["reverse"]
    tiny = grpo_tasks.GRPOTask(task.warm.replace(sft_steps=20, sft_size=512), task.pool.__class__(size=64),
                               task.learning_rate)  # fmt: skip
    monkeypatch.setitem(grpo_tasks.PRESETS, "reverse", tiny)

    class Options:
        learning_rate, max_steps, output_dir = 1e-4, 4, str(tmp_path / "results")

    for arm in ("uniform", "zpd"):
        run = grpo_study.run_one("reverse", arm, 0, Options)
        grpo_study.append_run(str(tmp_path / "results" / "reverse" / "runs.jsonl"), run)
        assert run["curves"]["tokens"][-1] > 0
    path = grpo_study.write_report(Options)
    text = open(path).read()
    assert "| uniform |" in text and "| zpd |" in text and "reverse.png" in text
