"""Likely label errors (`hf_zpd.label_errors`): listed from a run's record or from the scores of `hf-zpd score`, and
by `hf-zpd label-errors`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from builders import classification_dataset, tiny_bert_classifier
from transformers import DataCollatorWithPadding

from hf_zpd import ZPDConfig, ZPDTrainer, likely_label_errors
from hf_zpd.cli import main
from hf_zpd.selection import high_loss_flags


def scores_file(tmp_path, size=90, flipped=30):
    """Scores as `hf-zpd score` writes them: 3 classes, the first `flipped` examples with a separate high loss."""
    rng = np.random.default_rng(0)
    loss = rng.gamma(1.0, 0.15, size)
    loss[:flipped] = rng.normal(2.5, 0.2, flipped)
    frame = pd.DataFrame({"zpd_example_index": np.arange(size), "id": [f"tweet-{i}" for i in range(size)],
                          "loss": loss, "confidence": 0.5, "entropy": 0.5, "num_tokens": 1,
                          "label": np.arange(size) % 3})  # fmt: skip
    path = tmp_path / "scores.parquet"
    frame.sample(frac=1.0, random_state=1).to_parquet(path)  # in any row order
    return path, loss


def test_from_the_scores_of_hf_zpd_score(tmp_path):
    path, loss = scores_file(tmp_path)
    errors = likely_label_errors(str(path))
    assert sorted(errors["index"]) == list(range(30))
    assert errors["loss"].is_monotonic_decreasing and errors["loss"].tolist() == sorted(loss[:30], reverse=True)
    assert errors["example_id"].tolist() == [f"tweet-{i}" for i in errors["index"]]
    assert errors["label"].tolist() == [i % 3 for i in errors["index"]]
    assert errors["why"].str.contains("high-loss mode").all()
    texts = pd.DataFrame({"text": [f"text {i}" for i in range(90)]}).to_dict("records")
    with_text = likely_label_errors(str(path), dataset=texts, text_column="text")
    assert with_text["text"].tolist() == [f"text {i}" for i in with_text["index"]]


@pytest.mark.slow
def test_from_a_runs_record_and_from_the_command_line(tokenizer, tmp_path, capsys):
    dataset = classification_dataset(tokenizer, 60, keep_text=True)
    trainer = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), train_dataset=dataset.remove_columns("text"),
                         args=ZPDConfig(str(tmp_path / "run"), num_train_epochs=3, per_device_train_batch_size=8,
                                        learning_rate=5e-3, report_to=[], use_cpu=True, save_strategy="no",
                                        out_of_reach="high_loss", seed=7),
                         data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    trainer.train()
    record = trainer.curriculum
    errors = likely_label_errors(str(tmp_path / "run"), dataset=dataset, text_column="text")
    flagged = [draw.out_of_reach for draw in record.epochs.values() if draw.out_of_reach.size]
    if flagged:  # the last composed epoch's flags, and why
        assert sorted(errors["index"]) == sorted(flagged[-1].tolist())
        assert errors["why"].str.contains("out_of_reach='high_loss'").all()
    else:  # the run flagged none: the rule applied to its latest scores
        table = record.latest_scores
        expected, _ = high_loss_flags(table.loss, table.finite(), record.labels)
        assert sorted(errors["index"]) == np.flatnonzero(expected).tolist()
    assert errors["text"].tolist() == [dataset[int(i)]["text"] for i in errors["index"]]

    path, _ = scores_file(tmp_path)
    output = tmp_path / "errors.csv"
    assert main(["label-errors", str(path), "--output", str(output), "--top", "5"]) == 0
    out = capsys.readouterr().out
    assert "30 likely label errors" in out and f"Wrote {output}" in out
    assert sorted(pd.read_csv(output)["index"]) == list(range(30))


def test_a_source_that_is_neither_a_run_nor_scores_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither a run folder"):
        likely_label_errors(str(tmp_path))
