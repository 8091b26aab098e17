"""`examples/study.py` end to end on a tiny configuration: a tiny BERT classifier on 48 real tweets, 1 seed, then its
report. The study's committed results in examples/results/study/ come from the same code on the real model."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys

import pytest
from builders import tiny_bert_classifier

EXAMPLES = os.path.join(os.path.dirname(__file__), os.pardir, "examples")


def load(name: str):
    sys.path.insert(0, EXAMPLES)
    spec = importlib.util.spec_from_file_location(name, os.path.join(EXAMPLES, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def fake_uniform_run(seed: int, rate: float, ppl: float) -> dict:
    return {"task": "austen", "arm": "uniform", "seed": seed, "learning_rate": rate,
            "evaluations": [{"step": 72, "eval_ppl": ppl}]}  # fmt: skip


def test_tuned_rate_compares_rates_on_the_seeds_every_rate_ran():
    study = load("study")
    # Seed 0 swept both rates; 4e-3 won there. Seeds 1 and 2 (worse draws) then ran at 4e-3 only: a mean over
    # every seed would make 2e-3, with its one lucky seed, look better.
    runs = [fake_uniform_run(0, 2e-3, 42.9), fake_uniform_run(0, 4e-3, 42.7),
            fake_uniform_run(1, 4e-3, 43.9), fake_uniform_run(2, 4e-3, 45.0)]  # fmt: skip
    assert study.tuned_rate(runs, "austen") == 4e-3
    assert study.tuned_rate([fake_uniform_run(0, 2e-3, 42.9), fake_uniform_run(0, 4e-3, 43.1)], "austen") == 2e-3
    assert study.tuned_rate([], "austen") is None


@pytest.mark.slow
@pytest.mark.parametrize("task", ["tweets", "tweets_noisy"])
def test_the_study_runs_every_arm_and_reports_the_targets(task, tmp_path, tokenizer):
    study = load("study")
    model_dir = tmp_path / "tiny-bert"
    tiny_bert_classifier(len(tokenizer), num_labels=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    output_dir = tmp_path / "results"
    arms = ["uniform", "literal_loss", "zpd_loss", "random_loss", "uniform_60", "zpd_loss_60", "random_loss_60"]
    common = ["--task", task, "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir),
              "--seeds", "0", "--learning_rates", "1e-3", "3e-3", "--train_size", "48", "--eval_size", "24",
              "--max_length", "16", "--batch_size", "8", "--eval_steps", "3", "--num_threads", "1"]  # fmt: skip
    assert study.main([*common, "--arms", *arms]) == 0
    runs = study.read_runs(str(output_dir / task / "runs.jsonl"))
    uniform = [r for r in runs if r["arm"] == "uniform"]
    assert sorted(r["learning_rate"] for r in uniform) == [1e-3, 3e-3]
    tuned = study.tuned_rate(runs, task)
    by_arm = {r["arm"]: r for r in runs if r["learning_rate"] == tuned}
    assert set(by_arm) == set(arms)
    # 48 tweets in batches of 8 for 3 epochs: 18 steps at full compute, 60% of them for the reduced arms.
    assert {by_arm[a]["steps"] for a in ("uniform", "literal_loss", "zpd_loss", "random_loss")} == {18}
    assert {by_arm[a]["steps"] for a in ("uniform_60", "zpd_loss_60", "random_loss_60")} == {11, 12}
    # The random control draws with the same composition: after the identical first epoch, its second epoch has the
    # default arm's zone size, skips as many examples, and marks as many out of reach.
    ours, control = by_arm["zpd_loss"]["epochs"][1], by_arm["random_loss"]["epochs"][1]
    for key in ("zone_size", "num_skipped", "num_out_of_reach", "zone_draws", "fill_draws"):
        assert ours[key] == control[key], key
    assert ours["zone_digest"] != control["zone_digest"]  # the same sizes, other examples
    if task == "tweets_noisy":
        assert (
            ours["flipped_share_drawn"] is not None
            and by_arm["zpd_loss"]["epochs"][0]["flipped_draw_share"] == 10 / 48
        )
    # Rerunning skips every run already in runs.jsonl.
    assert study.main([*common, "--arms", *arms]) == 0
    assert len(study.read_runs(str(output_dir / task / "runs.jsonl"))) == len(runs)

    assert study.main(["--report", "--output_dir", str(output_dir)]) == 0
    report = (output_dir / "study.md").read_text()
    assert "Learning-rate sweep of the uniform Trainer" in report and "Targets (the default is `zpd_" in report
    assert (output_dir / f"{task}.png").stat().st_size > 0
    rows = (output_dir / "study.csv").read_text().splitlines()
    assert rows[0].split(",")[:3] == sorted(rows[0].split(","))[:3] and len(rows) > 20
    json.dumps(runs)  # every run is plain JSON


@pytest.mark.slow
def test_the_regime_arms_on_a_tiny_budget_task(tmp_path, tokenizer):
    """A budget over a pool: every arm trains the budget (twice it for uniform_x2; the limit trains the whole pool for
    its epochs), the ZPD arms score a pool of fresh candidates, and the runs count their compute."""
    study = load("study")
    model_dir = tmp_path / "tiny-bert"
    tiny_bert_classifier(len(tokenizer), num_labels=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    output_dir = tmp_path / "results"
    arms = ["uniform", "uniform_x2", "limit", "zpd", "random", "zpd-highloss-k1"]
    common = ["--task", "tweets_budget", "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir),
              "--seeds", "0", "--learning_rates", "1e-3", "--train_size", "160", "--eval_size", "24",
              "--max_length", "16", "--batch_size", "8", "--budget_steps", "8", "--num_threads", "1"]  # fmt: skip
    assert study.main([*common, "--arms", *arms]) == 0
    runs = {r["arm"]: r for r in study.read_runs(str(output_dir / "tweets_budget" / "runs.jsonl"))}
    assert {runs[a]["steps"] for a in ("uniform", "zpd", "random", "zpd-highloss-k1")} == {8}
    assert runs["uniform_x2"]["steps"] == 16 and runs["limit"]["steps"] == 2 * 160 // 8  # 2 passes over the pool
    for name in ("zpd", "random", "zpd-highloss-k1"):
        run = runs[name]
        assert run["settings"]["epoch_fraction"] == pytest.approx(16 / 160)  # 4 epochs of 2 steps
        assert run["scored_examples"] == 3 * 32 and run["trained_examples"] == 64
    assert runs["zpd-highloss-k1"]["settings"]["out_of_reach"] == "high_loss"
    assert runs["zpd-highloss-k1"]["settings"]["zone_repeats"] == 1
    assert runs["uniform"]["scored_examples"] == 0


def test_arm_names_stand_for_their_settings():
    study = load("study")
    arm = study.arm("random-highloss-rising-k1")
    expected = {**study.PILOT_BASE, "out_of_reach": "high_loss", "pacing": "rising", "zone_repeats": 1}
    assert arm.random_control and arm.overrides == expected
    assert study.arm("zpd").overrides == study.PILOT_BASE and not study.arm("zpd").random_control
    assert study.arm("pilot_no_guard_loss").overrides == {"difficulty_mode": "loss", "out_of_reach": "none"}
    with pytest.raises(ValueError, match="Unknown arm"):
        study.arm("zpd-sideways")


def test_bible_book_groups_from_the_bible_programs_output():
    """Books come in canonical order; a group starts at its first book (Joshua, Job, Isaiah, Matthew, Romans)."""
    study = load("study")
    chapters = [("Genesis 1", "In the beginning God created the heaven and the earth."), ("Joshua 1", "Now after."),
                ("1 Samuel 3", "And the child Samuel ministered."), ("Job 1", "There was a man."),
                ("Song of Solomon 2", "I am the rose of Sharon."), ("Isaiah 1", "The vision."),
                ("Matthew 1", "The book."), ("Acts 1", "The former treatise."), ("Romans 1", "Paul."),
                ("Revelation 22", "The grace of our Lord Jesus Christ be with you all. Amen.")]  # fmt: skip
    text = "".join(f"\n{heading}\n\n  1 {verse}\n" for heading, verse in chapters)
    verses = study.parse_bible(text)
    assert [group for _, group, _ in verses] == [0, 1, 1, 2, 2, 3, 4, 4, 5, 5]
    assert verses[0][0] == "In the beginning God created the heaven and the earth."


@pytest.mark.slow
def test_a_reference_arm_trains_its_reference_once_and_counts_its_compute(tmp_path, tokenizer):
    """`zpd-reference` reads the scores of a plain Trainer trained on other rows, labelled as the training set is
    (the same noise), scored on the training set; the reference is trained once per seed and counted in full;
    `uniform_pooled` trains the plain Trainer on both sets of rows."""
    study = load("study")
    model_dir = tmp_path / "tiny-bert"
    tiny_bert_classifier(len(tokenizer), num_labels=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    output_dir = tmp_path / "results"
    common = ["--task", "tweets_noise40", "--model_name_or_path", str(model_dir), "--output_dir", str(output_dir),
              "--seeds", "0", "--learning_rates", "1e-3", "--train_size", "48", "--eval_size", "16",
              "--max_length", "16", "--batch_size", "8", "--num_threads", "1"]  # fmt: skip
    assert study.main([*common, "--arms", "uniform", "zpd-reference", "zpd-reducible", "uniform_pooled"]) == 0
    runs = {r["arm"]: r for r in study.read_runs(str(output_dir / "tweets_noise40" / "runs.jsonl"))}
    reference = output_dir / "tweets_noise40" / "reference" / "seed0.parquet"
    assert reference.is_file() and runs["zpd-reference"]["reference"] == runs["zpd-reducible"]["reference"]
    cost = runs["zpd-reference"]["reference"]
    assert cost["trained_examples"] == 3 * 48 and cost["scored_examples"] == 48  # 3 epochs over 48 other rows
    assert runs["zpd-reference"]["settings"]["out_of_reach"] == "reference"
    assert runs["zpd-reducible"]["settings"]["difficulty_mode"] == "reducible"
    # uniform_pooled: the plain Trainer on the training set and the reference's rows together, 3 epochs of 96 rows.
    assert runs["uniform_pooled"]["steps"] == 3 * 96 // 8 and "settings" not in runs["uniform_pooled"]
    options = argparse.Namespace(train_size=48, eval_size=16, kjv_dir=None)
    rows = study.classification_rows(study.TASKS["tweets_noise40"], 0, options)
    assert not set(rows["reference"][0]) & (set(rows["train"][0]) | set(rows["eval"][0]))  # other rows


def test_the_no_harm_table_checks_the_default_against_uniform_minus_the_spread():
    """Met when 0.4's default is at least uniform minus the larger of the two seed spreads; budget tasks (where the
    defaults are the plain Trainer) and tasks without both arms are left out."""
    load("study_report")
    regimes = load("study_regimes")

    def entry(mean, std, seeds=3):
        return {"mean": mean, "std": std, "seeds": seeds, "vs_control": None, "finals": []}

    summaries = {
        "tweets_noise40": {"uniform": entry(0.66, 0.01), "zpd-audit": entry(0.645, 0.02), "zpd": entry(0.62, 0.02)},
        "bible_noise20": {"uniform": entry(0.60, 0.01), "zpd-audit": entry(0.58, 0.005)},
        "tweets_budget": {"uniform": entry(0.73, 0.02), "zpd-audit": entry(0.60, 0.01)},
        "tweets_clean": {"uniform": entry(0.73, 0.02), "zpd": entry(0.74, 0.01)},
    }
    rows = [
        line for line in regimes.no_harm_table(summaries) if line.startswith("| tweets") or line.startswith("| bible")
    ]
    assert len(rows) == 2
    assert rows[0].startswith("| tweets_noise40 |") and "| met |" in rows[0] and "-1.50 points" in rows[0]
    assert "-4.00 points" in rows[0]  # 0.3's default beside it
    assert rows[1].startswith("| bible_noise20 |") and "| MISSED |" in rows[1] and "-2.00 points" in rows[1]
