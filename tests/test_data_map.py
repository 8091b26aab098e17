"""The data map (`hf_zpd.data_map`): confidence, variability and correctness from the training passes, against a naive
reference, the regions, and the report's plot."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
from builders import classification_dataset, tiny_bert_classifier
from transformers import DataCollatorWithPadding

from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.data_map import data_map, data_map_from_passes
from hf_zpd.report import DATA_MAP, write_report


def naive_map(losses, labels, probabilities):
    """Swayamdipta et al.'s three numbers written out example by example (population std)."""
    epochs, size = losses.shape
    confidence, variability, correctness = (np.full(size, np.nan) for _ in range(3))
    for i in range(size):
        seen = [e for e in range(epochs) if math.isfinite(losses[e, i])]
        if not seen:
            continue
        p = [math.exp(-losses[e, i]) for e in seen]
        mean = sum(p) / len(p)
        confidence[i] = mean
        variability[i] = math.sqrt(sum((x - mean) ** 2 for x in p) / len(p))
        if probabilities is not None:
            correctness[i] = sum(int(np.argmax(probabilities[e, i]) == labels[i]) for e in seen) / len(seen)
    return confidence, variability, correctness


@pytest.mark.parametrize("epochs,size,classes", [(2, 1, 2), (3, 17, 3), (5, 64, 6)])
@pytest.mark.parametrize("missing", [0.0, 0.4])
@pytest.mark.parametrize("with_probabilities", [True, False])
def test_the_map_against_a_naive_reference(epochs, size, classes, missing, with_probabilities):
    rng = np.random.default_rng(epochs * 100 + size)
    logits = rng.normal(size=(epochs, size, classes))
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=2, keepdims=True)
    labels = rng.integers(0, classes, size)
    losses = -np.log(probabilities[:, np.arange(size), labels])
    gone = rng.random((epochs, size)) < missing  # epochs that did not draw the example
    losses[gone] = np.nan
    probabilities[gone] = np.nan
    given = probabilities if with_probabilities else None
    confidence, variability, correctness, num_passes = data_map_from_passes(losses, labels, given)
    expected = naive_map(losses, labels, given)
    for got, want in zip((confidence, variability, correctness), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(num_passes, np.isfinite(losses).sum(axis=0))


@pytest.mark.slow
def test_a_runs_map_and_the_reports_plot(tokenizer, tmp_path):
    dataset = classification_dataset(tokenizer, 48)
    trainer = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), train_dataset=dataset,
                         args=ZPDConfig(str(tmp_path), num_train_epochs=3, per_device_train_batch_size=8,
                                        learning_rate=5e-3, report_to=[], use_cpu=True, save_strategy="no"),
                         data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    trainer.train()
    trainer.save_state()
    cartography = data_map(trainer.curriculum)
    assert cartography.epochs == [1, 2, 3]
    passes = trainer.curriculum.training_passes
    losses = np.stack([passes[epoch][0].loss for epoch in (1, 2, 3)])
    probabilities = np.stack([passes[epoch][0].probabilities for epoch in (1, 2, 3)])
    expected = naive_map(losses, np.array(dataset["label"]), probabilities)
    np.testing.assert_allclose(cartography.confidence, expected[0], atol=1e-12)
    np.testing.assert_allclose(cartography.correctness, expected[2], atol=1e-12)
    regions = cartography.regions()
    assert set(regions) <= {"easy-to-learn", "ambiguous", "hard-to-learn"}
    assert (regions == "ambiguous").sum() <= math.ceil(len(dataset) / 3)  # the top third by variability
    folder = write_report(str(tmp_path))
    assert os.path.getsize(os.path.join(folder, DATA_MAP)) > 0
    assert f"]({DATA_MAP})" in open(os.path.join(folder, "report.md")).read()


def test_a_single_epoch_has_no_map():
    from hf_zpd.record import CurriculumRecord
    from hf_zpd.scoring import ScoreTable

    record = CurriculumRecord(settings={"dataset_size": 3})
    record.training_passes[1] = (ScoreTable.empty(3), np.zeros(3))
    with pytest.raises(ValueError, match="at least two epochs"):
        data_map(record)
