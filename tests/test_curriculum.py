"""`Curriculum`, driven without a Trainer: what each epoch draws, which passes run, and the out-of-reach rules.

The scoring pass is a function of the test's own (a table computed from known losses), so every decision can be
checked against the method's rules written out here.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hf_zpd.config import RISING_BAND_START, ZPDArguments
from hf_zpd.curriculum import Curriculum
from hf_zpd.record import CurriculumRecord
from hf_zpd.sampler import trainer_order
from hf_zpd.scoring import ScoreTable
from hf_zpd.statistics import ExampleStatistics

SIZE = 60


def table_of(losses: np.ndarray, indices: np.ndarray, vocab_size: int = 3) -> ScoreTable:
    """A scoring pass that found these losses (confidence and entropy follow the loss), on `indices` only."""
    table = ScoreTable.empty(losses.size, vocab_size)
    table.loss[indices] = losses[indices]
    table.confidence[indices] = np.exp(-losses[indices])
    table.entropy[indices] = np.clip(losses[indices] / math.log(vocab_size), 0, 1)
    table.num_tokens[indices] = 1
    return table


class Harness:
    """A curriculum over SIZE examples whose scoring passes return `losses(boundary)`, with every call recorded."""

    def __init__(self, losses, labels=None, num_samples=SIZE, total_samples=3 * SIZE, pool_size=None, **fields):
        self.losses, self.passes, self.logs = losses, [], []
        self.args = ZPDArguments(**fields)
        record = CurriculumRecord(settings={"dataset_size": SIZE, "competence_weights": [0.4, 0.35, 0.25]})
        record.labels = labels
        self.curriculum = Curriculum(
            self.args,
            record,
            num_samples=num_samples,
            total_samples=total_samples,
            global_batch_size=4,
            seed=7,
            shuffle_seed=7,
            labels=labels,
            scoring_pool_size=pool_size,
            score_pool=self.score,
            merge=lambda scores: scores.merge(None),
            log=self.logs.append,
        )

    def score(self, indices):
        boundary = len(self.passes) + 1
        self.passes.append(np.asarray(indices))
        return table_of(self.losses(boundary), np.asarray(indices)), 0.01

    def train(self, epochs: int) -> None:
        """Begins and ends `epochs` epochs, showing the curriculum each drawn example's training loss."""
        for epoch in range(1, epochs + 1):
            self.curriculum.begin_epoch(epoch)
            drawn = np.flatnonzero(self.curriculum.plan_for(epoch).counts)
            loss = torch.as_tensor(self.losses(epoch - 0.5)[drawn], dtype=torch.float64)
            ones = torch.ones_like(loss)
            self.curriculum.observe(torch.as_tensor(drawn), epoch, ExampleStatistics(loss, ones, ones, ones, 3))
            self.curriculum.end_epoch(epoch, more_to_train=epoch < epochs)


def falling_losses(boundary) -> np.ndarray:
    """Every example's loss falls as training goes on."""
    return np.linspace(0.2, 2.0, SIZE) / (1.0 + boundary)


def test_the_first_epoch_is_the_trainers_and_a_one_epoch_run_scores_nothing():
    harness = Harness(falling_losses)
    assert harness.curriculum.plan_for(1).order.tolist() == trainer_order(SIZE, SIZE, 7, 1).tolist()
    harness.train(1)
    assert harness.passes == [] and sorted(harness.curriculum.record.epochs) == [1]
    assert harness.logs == [{"zpd/epoch": 1.0, "zpd/uniform": 1.0, "zpd/num_skipped": 0.0}]


def test_one_pass_per_composed_epoch_none_after_the_last():
    harness = Harness(falling_losses)
    harness.train(3)
    assert len(harness.passes) == 2 and sorted(harness.curriculum.record.history.tables) == [1, 2]
    assert [log["zpd/epoch"] for log in harness.logs] == [1.0, 2.0, 3.0]


def test_a_scoring_pool_takes_examples_not_drawn_yet_first():
    # Epochs of 15 samples over 60 examples; each pass scores 30, of those not drawn by the epochs before it first.
    harness = Harness(falling_losses, num_samples=15, total_samples=60, pool_size=30)
    harness.train(4)
    drawn_before = np.zeros(SIZE, dtype=bool)
    for boundary, scored in enumerate(harness.passes, start=1):
        drawn_before |= harness.curriculum.record.epochs[boundary].counts > 0
        fresh = np.flatnonzero(~drawn_before)
        assert scored.size == 30
        assert np.isin(scored, fresh).sum() == min(30, fresh.size)  # every fresh example that fits is scored
        epoch = harness.curriculum.record.epochs[boundary + 1]
        drawn = np.flatnonzero(epoch.counts - epoch.anneal_counts)
        assert np.isin(drawn, scored).all()  # the zone and the fill come from the scored pool


def flipped_losses(boundary) -> np.ndarray:
    """Examples 0-19 are 'flipped': their loss stays high; the others fall."""
    rng = np.random.default_rng(int(boundary * 10))
    losses = rng.gamma(1.0, 0.15, SIZE) / (1 + boundary)
    losses[:20] = rng.normal(2.0, 0.2, 20)
    return losses


def test_high_loss_rule_keeps_the_high_mode_out_of_every_part_of_the_epoch():
    labels = np.arange(SIZE) % 3
    harness = Harness(flipped_losses, labels=labels, out_of_reach="high_loss", replay_fraction=0.1)
    harness.train(3)
    for epoch in (2, 3):
        draw = harness.curriculum.record.epochs[epoch]
        np.testing.assert_array_equal(draw.out_of_reach, np.arange(20))  # the flipped ones, in every class
        assert draw.counts[:20].sum() == 0 and draw.counts.sum() == SIZE  # not drawn; the epoch stays full
        assert draw.metrics["zpd/num_out_of_reach"] == 20 and draw.metrics["zpd/num_out_of_reach_capped"] == 0


def test_the_bound_on_flags_keeps_the_highest_losses_and_logs_the_cut():
    harness = Harness(flipped_losses, out_of_reach="high_loss", max_out_of_reach_fraction=0.2)
    harness.train(2)
    draw = harness.curriculum.record.epochs[2]
    losses = harness.curriculum.record.history.tables[1].loss
    assert draw.out_of_reach.size == 12  # 20% of 60
    assert set(draw.out_of_reach) == set(np.argsort(-losses, kind="stable")[:12])
    assert draw.metrics["zpd/num_out_of_reach_capped"] == 20 - 12


def test_the_reference_rule_reads_the_reference_losses():
    reference = table_of(np.where(np.arange(SIZE) >= 45, 2.5, 0.1) + np.linspace(0, 0.05, SIZE), np.arange(SIZE))
    harness = Harness(falling_losses, out_of_reach="reference")
    harness.curriculum.reference = reference
    harness.train(2)
    np.testing.assert_array_equal(harness.curriculum.record.epochs[2].out_of_reach, np.arange(45, SIZE))


def test_reducible_difficulty_is_the_learner_minus_the_reference_loss():
    reference = table_of(np.linspace(0.0, 1.0, SIZE), np.arange(SIZE))
    harness = Harness(falling_losses, difficulty_mode="reducible")
    harness.curriculum.reference = reference
    table = table_of(falling_losses(1), np.arange(SIZE))
    np.testing.assert_allclose(harness.curriculum.log_difficulty(table), falling_losses(1) - reference.loss)


def test_the_guard_compares_the_first_epochs_training_losses_with_the_first_pass():
    """Examples 0-9 got worse between their training pass in epoch 1 and the pass after it: flagged if not below the
    level. No pass ran before training."""

    def losses(boundary):
        values = np.linspace(0.5, 1.5, SIZE)
        if boundary == 1:  # the pass after epoch 1: everyone fell by 0.1 except 0-9, which rose
            values = values - 0.1
            values[:10] += 0.5
        return values

    harness = Harness(losses)
    harness.train(2)
    after = harness.curriculum.record.history.tables[1]
    log_d = harness.curriculum.log_difficulty(after)
    expected = np.flatnonzero((np.arange(SIZE) < 10) & (log_d >= log_d.mean()))
    np.testing.assert_array_equal(harness.curriculum.record.epochs[2].out_of_reach, expected)
    assert expected.size > 0 and len(harness.passes) == 1


@pytest.mark.parametrize("pacing", ["fixed", "rising"])
def test_the_band_rises_from_below_the_level_with_rising_pacing(pacing):
    harness = Harness(falling_losses, pacing=pacing, anneal_fraction=0.0, class_balance=False)
    harness.train(3)
    for epoch in (2, 3):
        metrics = harness.curriculum.record.epochs[epoch].metrics
        progress = (epoch - 1) * SIZE / (3 * SIZE)
        factor = 1.0 if pacing == "fixed" else RISING_BAND_START + (1 - RISING_BAND_START) * progress
        group_band = harness.curriculum.record.epochs[epoch].bands[-1]
        assert group_band[1] == pytest.approx(1.1 * factor * group_band[0])
        assert group_band[2] == pytest.approx(1.3 * factor * group_band[0])
        assert metrics["zpd/level"] == pytest.approx(group_band[0])


def test_easy_first_grows_its_share_with_training():
    harness = Harness(falling_losses, composition="easy_first", anneal_fraction=0.0, class_balance=False,
                      min_zone_fraction=0.01)  # fmt: skip
    harness.train(3)
    zones = harness.curriculum.record.zones
    assert zones[2].size == math.ceil((0.5 + 0.5 * 1 / 3) * SIZE) and zones[3].size == math.ceil(
        (0.5 + 0.5 * 2 / 3) * SIZE
    )
    # falling_losses is ordered: the easiest examples are the first ones
    np.testing.assert_array_equal(zones[2], np.arange(zones[2].size))


# ---- the label audit's list (exclude_label_errors) ----


class AuditHarness(Harness):
    """A classifier's scoring passes: 3 classes, the class probabilities favour `predicted` (0.7 against 0.15)."""

    def __init__(self, losses, predicted, **fields):
        self.predicted = predicted
        super().__init__(losses, labels=np.arange(SIZE) % 3, **fields)

    def score(self, indices):
        table, seconds = super().score(indices)
        table.probabilities = np.full((SIZE, 3), np.nan)
        rows = np.asarray(indices)
        table.probabilities[rows] = 0.15
        table.probabilities[rows, self.predicted[rows]] = 0.7
        return table, seconds


def audited(**fields):
    """Losses whose band (difficulty = perplexity, A1) holds about a fifth of each class, and a model that prefers
    another class for every other example of the band."""
    labels = np.arange(SIZE) % 3
    losses = lambda boundary: 1.0 + 0.4 * np.linspace(-1.0, 1.0, SIZE)  # noqa: E731
    predicted = labels.copy()
    fields = {"difficulty_mode": "loss", "out_of_reach": "none", **fields}
    harness = AuditHarness(losses, predicted, **fields)
    composed = Harness(losses, labels=labels, **{**fields, "exclude_label_errors": False})
    composed.train(2)
    band = composed.curriculum.record.epochs[2].in_band
    assert band.size >= 6
    predicted[band[::2]] = (labels[band[::2]] + 1) % 3  # listed: half of the band
    return harness, predicted != labels, band, None


def test_the_label_audits_list_leaves_the_zone_and_comes_last_in_the_fill(caplog):
    harness, listed, band, _ = audited()
    harness.train(2)
    draw = harness.curriculum.record.epochs[2]
    assert not np.isin(draw.zone, np.flatnonzero(listed)).any(), "a listed example is never repeated in the zone"
    assert np.isin(np.flatnonzero(listed), draw.out_of_reach).all()
    metrics = draw.metrics
    assert metrics["zpd/num_label_errors"] == listed.sum()
    assert metrics["zpd/band_label_error_share"] == pytest.approx(np.isin(band, np.flatnonzero(listed)).mean())
    # Without the audit the same band holds the listed examples: the setting is what kept them out.
    unaudited, _, _, _ = audited(exclude_label_errors=False)
    unaudited.train(2)
    assert np.isin(unaudited.curriculum.record.epochs[2].zone, np.flatnonzero(listed)).any()


def test_one_log_line_when_the_list_holds_most_of_the_band(caplog):
    labels = np.arange(SIZE) % 3
    predicted = (labels + 1) % 3  # the model prefers another class for every example
    harness = AuditHarness(
        lambda boundary: 1.0 + 0.4 * np.linspace(-1.0, 1.0, SIZE),
        predicted,
        difficulty_mode="loss",
        out_of_reach="none",
    )
    with caplog.at_level("WARNING", logger="hf_zpd.curriculum"):
        harness.train(3)
    lines = [r.getMessage() for r in caplog.records if "dominated by likely label errors" in r.getMessage()]
    assert len(lines) == 1 and "Epoch 2: 100%" in lines[0], "logged once, at the first epoch it happens"
    assert harness.curriculum.record.epochs[3].metrics["zpd/band_label_error_share"] == 1.0


def test_a_language_model_or_no_probabilities_has_no_list():
    harness = Harness(falling_losses, labels=np.arange(SIZE) % 3)  # a table without class probabilities
    harness.train(2)
    assert "zpd/num_label_errors" not in harness.curriculum.record.epochs[2].metrics
