"""The label audit (`hf_zpd.label_errors`): every example ranked from a run's training passes or from the scores of
`hf-zpd score`, the list, cleanlab's variant, the bad inputs, and `hf-zpd label-errors`."""

from __future__ import annotations

import sys

import numpy as np
import pandas as pd
import pytest
from builders import classification_dataset, tiny_bert_classifier, tiny_llama
from transformers import DataCollatorForLanguageModeling, DataCollatorWithPadding

from hf_zpd import ZPDConfig, ZPDTrainer, likely_label_errors
from hf_zpd.cli import main
from hf_zpd.label_errors import audit_from_probabilities, audit_labels, averaged_probabilities


def naive_audit(passes: list[np.ndarray], labels: np.ndarray):
    """The audit written out example by example: the mean of the passes that measured it, 1 - p(label), argmax."""
    size = labels.size
    score, predicted = np.full(size, np.nan), np.full(size, -1)
    for i in range(size):
        rows = [p[i] for p in passes if np.isfinite(p[i]).all()]
        if not rows or labels[i] < 0:
            continue
        mean = sum(rows) / len(rows)
        score[i] = 1.0 - mean[labels[i]]
        predicted[i] = int(np.argmax(mean))
    return score, predicted, (predicted != labels) & (predicted >= 0)


@pytest.mark.parametrize("size,classes,epochs", [(1, 2, 1), (7, 3, 2), (33, 5, 3), (64, 2, 4)])
@pytest.mark.parametrize("missing", [0.0, 0.3])
def test_the_audit_against_a_naive_reference(size, classes, epochs, missing):
    rng = np.random.default_rng(size * 7 + classes)
    passes = []
    for _ in range(epochs):
        logits = rng.normal(size=(size, classes))
        probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        probabilities[rng.random(size) < missing] = np.nan  # the epoch did not draw these
        passes.append(probabilities)
    labels = rng.integers(0, classes, size)
    labels[rng.random(size) < 0.1] = -1  # unknown labels are never listed
    audit = audit_from_probabilities(averaged_probabilities(np.stack(passes)), labels)
    score, predicted, listed = naive_audit(passes, labels)
    np.testing.assert_allclose(audit.score, score, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(audit.predicted, predicted)
    np.testing.assert_array_equal(audit.listed, listed)
    order = audit.ranking()
    assert np.isfinite(audit.score[order]).all() and (np.diff(audit.score[order]) <= 0).all()


def trained_classifier(tokenizer, tmp_path, epochs=3, **overrides):
    dataset = classification_dataset(tokenizer, 60, keep_text=True)
    labels = np.array(dataset["label"])
    flipped = np.arange(0, 60, 5)  # every fifth label moved to the next class
    labels[flipped] = (labels[flipped] + 1) % 3
    dataset = dataset.remove_columns("label").add_column("label", labels.tolist())
    values = dict(num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=5e-3, report_to=[],
                  use_cpu=True, save_strategy="no", seed=7)  # fmt: skip
    values.update(overrides)
    trainer = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), train_dataset=dataset.remove_columns("text"),
                         args=ZPDConfig(str(tmp_path / "run"), **values),
                         data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    trainer.train()
    return trainer, dataset


@pytest.mark.slow
def test_a_runs_audit_reads_its_training_passes_and_the_command_line_writes_it(tokenizer, tmp_path, capsys):
    trainer, dataset = trained_classifier(tokenizer, tmp_path)
    record = trainer.curriculum
    assert sorted(record.training_passes) == [1, 2, 3]
    # The passes as the record stores them: per epoch, each drawn example's class probabilities.
    passes = [record.training_passes[epoch][0].probabilities for epoch in (1, 2, 3)]
    labels = np.array(dataset["label"])
    score, predicted, listed = naive_audit(passes, labels)
    ranking = likely_label_errors(str(tmp_path / "run"), dataset=dataset, text_column="text")
    assert len(ranking) == np.isfinite(score).sum() == 60
    np.testing.assert_allclose(ranking["score"], score[ranking["index"]], atol=1e-12)
    assert (np.diff(ranking["score"]) <= 0).all() and ranking["rank"].tolist() == list(range(1, 61))
    assert ranking["predicted"].tolist() == predicted[ranking["index"]].tolist()
    assert ranking["listed"].tolist() == listed[ranking["index"]].tolist()
    assert ranking["text"].tolist() == [dataset[int(i)]["text"] for i in ranking["index"]]
    assert (ranking.loc[ranking["listed"], "why"].str.contains("training passes")).all()
    first = audit_labels(record, method="first_epoch")
    np.testing.assert_allclose(first.score, 1.0 - passes[0][np.arange(60), labels], atol=1e-12)

    output = tmp_path / "errors.csv"
    assert main(["label-errors", str(tmp_path / "run"), "--output", str(output), "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert f"{int(listed.sum())} of 60 examples are on the label audit's list" in out
    written = pd.read_csv(output)
    assert written["index"].tolist() == ranking["index"].tolist()
    assert written["listed"].sum() == listed.sum()


@pytest.mark.slow
def test_confident_learning_is_cleanlabs_find_label_issues_on_the_same_probabilities(tokenizer, tmp_path):
    cleanlab_filter = pytest.importorskip("cleanlab.filter")
    trainer, dataset = trained_classifier(tokenizer, tmp_path)
    record = trainer.curriculum
    stacked = np.stack([record.training_passes[epoch][0].probabilities for epoch in (1, 2, 3)])
    mean = np.nanmean(stacked, axis=0)
    audit = audit_labels(record, method="confident_learning")
    np.testing.assert_array_equal(audit.listed, cleanlab_filter.find_label_issues(record.labels, mean))


def test_without_cleanlab_confident_learning_names_the_install_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "cleanlab", None)
    monkeypatch.setitem(sys.modules, "cleanlab.filter", None)
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8]])
    with pytest.raises(ImportError, match="pip install cleanlab"):
        audit_from_probabilities(probabilities, np.array([0, 0]), method="confident_learning")


def scores_file(tmp_path, with_probabilities: bool):
    """Scores as `hf-zpd score` writes them, in any row order: 3 classes, the first 30 examples with a high loss."""
    rng = np.random.default_rng(0)
    size = 90
    loss = rng.gamma(1.0, 0.15, size)
    loss[:30] = rng.normal(2.5, 0.2, 30)
    labels = np.arange(size) % 3
    frame = pd.DataFrame({"zpd_example_index": np.arange(size), "id": [f"tweet-{i}" for i in range(size)],
                          "loss": loss, "confidence": 0.5, "entropy": 0.5, "num_tokens": 1, "label": labels})  # fmt: skip
    if with_probabilities:  # consistent with the loss: p(label) = exp(-loss); the rest on the next class
        rows = np.zeros((size, 3))
        rows[np.arange(size), labels] = np.exp(-loss)
        rows[np.arange(size), (labels + 1) % 3] = 1.0 - np.exp(-loss)
        frame["probabilities"] = list(rows)
    path = tmp_path / "scores.parquet"
    frame.sample(frac=1.0, random_state=1).to_parquet(path)
    return path, loss


@pytest.mark.parametrize("with_probabilities", [True, False])
def test_from_the_scores_of_hf_zpd_score(tmp_path, with_probabilities):
    path, loss = scores_file(tmp_path, with_probabilities)
    ranking = likely_label_errors(str(path))
    assert ranking["index"].tolist() == np.argsort(-loss, kind="stable").tolist()  # 1 - p(y) ranks as the loss does
    assert sorted(ranking.loc[ranking["listed"], "index"]) == list(range(30))
    assert ranking["example_id"].tolist() == [f"tweet-{i}" for i in ranking["index"]]
    if with_probabilities:
        listed = ranking[ranking["listed"]]
        assert (listed["predicted"] == (listed["label"] + 1) % 3).all()
    else:  # no class probabilities: the high-loss mode of each class
        assert (ranking["predicted"] == -1).all()
        assert ranking.loc[ranking["listed"], "why"].str.contains("high-loss mode").all()


def test_a_source_that_is_neither_a_run_nor_scores_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="neither a run folder"):
        likely_label_errors(str(tmp_path))


def test_scores_without_labels_are_refused_with_the_reason(tmp_path):
    path = tmp_path / "scores.parquet"
    pd.DataFrame({"zpd_example_index": [0, 1], "loss": [0.1, 2.0]}).to_parquet(path)
    with pytest.raises(ValueError, match="no 'label' column"):
        likely_label_errors(str(path))


@pytest.mark.slow
def test_a_language_models_record_has_nothing_to_audit(tokenizer, tmp_path):
    from builders import causal_lm_dataset

    trainer = ZPDTrainer(model=tiny_llama(len(tokenizer)), train_dataset=causal_lm_dataset(tokenizer, 24).remove_columns("labels"),
                         args=ZPDConfig(str(tmp_path), num_train_epochs=2, per_device_train_batch_size=8,
                                        report_to=[], use_cpu=True, save_strategy="no"),
                         data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False))  # fmt: skip
    trainer.train()
    assert trainer.curriculum.training_passes, "a language model's training passes are recorded too"
    with pytest.raises(ValueError, match="integer class labels"):
        likely_label_errors(trainer.curriculum)


@pytest.mark.slow
def test_a_replayed_run_points_to_hf_zpd_score(tokenizer, tmp_path):
    trainer, dataset = trained_classifier(tokenizer, tmp_path, epochs=2)
    replay = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), train_dataset=dataset.remove_columns("text"),
                        args=ZPDConfig(str(tmp_path / "replay"), num_train_epochs=2, per_device_train_batch_size=8,
                                       report_to=[], use_cpu=True, save_strategy="no", seed=7,
                                       replay_curriculum=str(tmp_path / "run")),
                        data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    replay.train()
    assert replay.curriculum.training_passes == {}, "a replay trains on recorded draws and collects no passes"
    with pytest.raises(ValueError, match="hf-zpd score"):
        likely_label_errors(replay.curriculum)
