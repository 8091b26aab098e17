"""Trainer-level behaviour: schedule, selection, logging, resume, and bad input, on tiny real models."""

import logging
import math
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from builders import (
    assert_bitwise_equal,
    causal_lm_dataset,
    classification_dataset,
    final_weights,
    seq2seq_dataset,
    tiny_bert_classifier,
    tiny_gpt2,
    tiny_t5,
)
from transformers import (
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

from hf_zpd import ZPDConfig, ZPDTrainer, load_curriculum
from hf_zpd.curriculum import Curriculum
from hf_zpd.record import RECORD_NAME
from hf_zpd.sampler import trainer_order
from hf_zpd.scoring import run_scoring_pass
from hf_zpd.state import STATE_NAME

README = Path(__file__).resolve().parent.parent / "README.md"


def base_values(tmp_path, name, **overrides) -> dict:
    values = dict(
        output_dir=str(tmp_path / name),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=7,
    )
    values.update(overrides)
    return values


def config(tmp_path, name="run", **overrides) -> ZPDConfig:
    return ZPDConfig(**base_values(tmp_path, name, **overrides))


def plain_config(tmp_path, name="plain", **overrides) -> TrainingArguments:
    """The same arguments for the plain Trainer (no ZPD fields)."""
    return TrainingArguments(**base_values(tmp_path, name, **overrides))


def gpt2_trainer(tokenizer, args, num_examples=48, trainer_class=ZPDTrainer, prompt_tokens=2, **kwargs):
    dataset = causal_lm_dataset(tokenizer, num_examples, prompt_tokens=prompt_tokens)
    return trainer_class(
        model=tiny_gpt2(len(tokenizer)),
        args=args,
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer),
        **kwargs,
    )


def zpd_logs(trainer) -> list[dict]:
    """The entries logged when an epoch was drawn around a zone (not the uniform first epoch)."""
    return [e for e in trainer.state.log_history if "zpd/epoch" in e and not e.get("zpd/uniform")]


def plan_logs(trainer) -> list[dict]:
    """Every epoch's planning entry, uniform epochs included."""
    return [e for e in trainer.state.log_history if "zpd/epoch" in e]


# ---- schedule ----


@pytest.mark.parametrize("accumulation", [1, 2])
def test_schedule_matches_plain_trainer(tokenizer, tmp_path, accumulation):
    """Same steps, learning rates, eval and save points as the plain Trainer with the same arguments."""
    common = dict(gradient_accumulation_steps=accumulation, eval_strategy="steps", eval_steps=3)
    common.update(save_strategy="steps", save_steps=4)
    plain = gpt2_trainer(
        tokenizer,
        plain_config(tmp_path, **common),
        trainer_class=Trainer,
        eval_dataset=causal_lm_dataset(tokenizer, 8, seed=1),
    )
    ours = gpt2_trainer(
        tokenizer, config(tmp_path, "zpd", **common), eval_dataset=causal_lm_dataset(tokenizer, 8, seed=1)
    )
    plain_output, our_output = plain.train(), ours.train()
    assert our_output.global_step == plain_output.global_step == 3 * math.ceil(6 / accumulation)

    def schedule(trainer):
        history = trainer.state.log_history
        return (
            [(e["step"], e["learning_rate"]) for e in history if "learning_rate" in e],
            [e["step"] for e in history if "eval_loss" in e],
        )

    assert schedule(ours) == schedule(plain)
    # The same checkpoints; ZPDTrainer adds its curriculum record to output_dir at the end of training.
    assert sorted(os.listdir(tmp_path / "zpd")) == sorted(os.listdir(tmp_path / "plain") + [RECORD_NAME])


@pytest.mark.parametrize("epoch_fraction", [0.5, 0.8])
def test_epoch_fraction_fixes_every_epoch_length(tokenizer, tmp_path, epoch_fraction):
    trainer = gpt2_trainer(tokenizer, config(tmp_path, epoch_fraction=epoch_fraction, replay_fraction=0.25))
    output = trainer.train()
    samples = math.ceil(48 * epoch_fraction)
    assert output.global_step == 3 * math.ceil(samples / 8)
    assert sorted(trainer.curriculum.epochs) == [1, 2, 3]
    for epoch in (1, 2, 3):
        draw = trainer._zpd_sampler.epoch_indices(epoch)
        assert draw.shape == (samples,) and trainer.curriculum.epochs[epoch].counts.sum() == samples
        assert draw.min() >= 0 and draw.max() < 48


# ---- selection ----


def reference_zone(loss: np.ndarray, vocab_size: int, min_size: int, lower=1.1, upper=1.3) -> tuple[list[int], float]:
    """The method's loss-only rule (A1) written out: d_i = PPL_i = exp(l_i) with l_i capped at log V, the level
    D = exp(mean_i log d_i) over the scored examples, the zone lower * D <= d_i <= upper * D, widened to the `min_size`
    examples nearest to it in log-difficulty (ties to the lower index)."""
    log_v = math.log(vocab_size)
    scored = [i for i in range(loss.size) if math.isfinite(loss[i])]
    log_d = {i: min(float(loss[i]), log_v) for i in scored}
    log_level = sum(log_d.values()) / len(log_d)
    low, high = log_level + math.log(lower), log_level + math.log(upper)
    zone = [i for i in scored if low <= log_d[i] <= high]
    if len(zone) < min_size:
        distance = {i: max(low - log_d[i], log_d[i] - high, 0.0) for i in scored}
        zone = sorted(sorted(scored, key=lambda i: (distance[i], i))[:min_size])
    return zone, math.exp(log_level)


def test_zones_follow_the_method_rule(tokenizer, tmp_path):
    """Each epoch's zone is the method's band rule on the scores behind it, re-derived here from the formulas."""
    args = config(tmp_path, difficulty_mode="loss", min_zone_fraction=0.1, out_of_reach="none", anneal_fraction=0.0)
    trainer = gpt2_trainer(tokenizer, args)
    trainer.train()
    record = trainer.curriculum
    assert sorted(record.zones) == [2, 3]
    for entry, epoch in zip(zpd_logs(trainer), (2, 3), strict=True):
        table = record.scores_for(epoch)
        assert record.epochs[epoch].scored_at == epoch - 1  # the pass at the end of the epoch before
        expected, level = reference_zone(table.loss, table.vocab_size, min_size=max(math.ceil(0.1 * 48), 8))
        assert record.zones[epoch].tolist() == expected
        assert entry["zpd/level"] == pytest.approx(level, rel=1e-9)
        assert entry["zpd/ppl"] == pytest.approx(math.exp(np.mean(table.loss)), rel=1e-9)
        assert entry["zpd/num_selected"] == len(expected)
        # The epoch really drew around the zone: every zone example twice (k = 2), and 48 draws in all.
        counts = np.bincount(trainer._zpd_sampler.epoch_indices(epoch), minlength=48)
        assert counts.sum() == 48 and (counts[expected] == 2).all()


def test_scoring_pass_matches_one_example_at_a_time(tokenizer, tmp_path):
    """Length-grouped, padded scoring puts each example's statistics back at its own index."""
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=1), num_examples=21)
    trainer.train()
    model = trainer.model
    table, _ = trainer._score_pool(np.arange(21))
    loader = trainer._zpd_loader
    model.eval()
    for index in range(21):
        batch = loader.collate_fn([loader.dataset[index]])
        batch.pop("zpd_index")
        with torch.no_grad():
            stats = trainer._forward_statistics(model, batch)
        assert table.loss[index] == pytest.approx(stats.loss.item(), abs=1e-5)
        assert table.confidence[index] == pytest.approx(stats.confidence.item(), abs=1e-5)
        assert table.entropy[index] == pytest.approx(stats.entropy.item(), abs=1e-5)
        assert table.num_tokens[index] == stats.num_tokens.item()


def test_scoring_pass_restores_mode_and_rng(tokenizer, tmp_path):
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=1))
    trainer.train()
    trainer.model.train()
    before = torch.random.get_rng_state(), np.random.get_state()[1].copy()
    trainer._score_pool(np.arange(48))
    assert trainer.model.training
    assert torch.equal(torch.random.get_rng_state(), before[0])
    np.testing.assert_array_equal(np.random.get_state()[1], before[1])


def test_scoring_runs_under_the_mixed_precision_setting_before_and_during_training(tokenizer, tmp_path):
    """Every scoring forward runs under the accelerator's autocast, as `evaluate()` would, also when
    `score_dataset` is called before `train()` has prepared the model (bf16 autocast works on CPU)."""
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=2, bf16=True), num_examples=16)
    forwards = []  # (training mode, autocast on) of every forward through the first block
    trainer.model.transformer.h[0].register_forward_pre_hook(
        lambda module, args: forwards.append((module.training, torch.is_autocast_enabled("cpu")))
    )
    scores = trainer.score_dataset()
    assert len(scores) == 16 and forwards and set(forwards) == {(False, True)}
    forwards.clear()
    trainer.train()
    assert set(forwards) == {(False, True), (True, True)}  # the epoch-end scoring pass, and the training steps


def test_scoring_pool_size_and_rescore_cadence(tokenizer, tmp_path):
    args = config(tmp_path, num_train_epochs=4, scoring_pool_size=20, rescore_every=2, replay_fraction=0.25)
    trainer = gpt2_trainer(tokenizer, args)
    trainer.train()
    logs = zpd_logs(trainer)
    assert [log["zpd/epoch"] for log in logs] == [2, 3, 4]
    assert [log["zpd/rescored"] for log in logs] == [1, 0, 1]
    assert all(log["zpd/num_scored"] == 20 for log in logs)
    # Epoch 3 reuses the scores of the pass after epoch 1: the same zone, but a different draw.
    record = trainer.curriculum
    assert [record.epochs[e].scored_at for e in (2, 3, 4)] == [1, 1, 3]
    np.testing.assert_array_equal(record.zones[2], record.zones[3])
    sampler = trainer._zpd_sampler
    assert not np.array_equal(sampler.epoch_indices(2), sampler.epoch_indices(3))
    # The zone lies inside the scored pool.
    scored = np.flatnonzero(~np.isnan(record.latest_scores.num_tokens))
    assert scored.size == 20 and set(record.zones[4]) <= set(scored)


def test_score_before_training_draws_the_first_epoch_around_the_zone(tokenizer, tmp_path):
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=2, score_before_training=True))
    trainer.train()
    record = trainer.curriculum
    assert sorted(record.zones) == [1, 2] and record.epochs[1].scored_at == 0
    counts = np.bincount(trainer._zpd_sampler.epoch_indices(1), minlength=48)
    assert (counts[record.zones[1]] >= 1).all()
    assert zpd_logs(trainer)[0]["zpd/epoch"] == 1


class RecordingCurriculum(Curriculum):
    """Keeps the training loss each example had the first time a training batch drew it (in epoch 1)."""

    def observe(self, index, step, stats):
        self.first_losses = getattr(self, "first_losses", {})
        for example, loss in zip(index.tolist(), stats.loss.tolist(), strict=True):
            self.first_losses.setdefault(example, loss)
        super().observe(index, step, stats)


def test_the_first_epoch_is_uniform_and_the_guard_baseline_costs_no_pass(tokenizer, tmp_path):
    """No pass runs before training: the guard's first flags compare the loss each example had when epoch 1 trained
    on it with the pass after epoch 1; and no pass runs after the last epoch."""
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=3), trainer_class=CountingScoringPasses)
    trainer.curriculum_class = RecordingCurriculum
    trainer.train()
    record = trainer.curriculum
    first = record.epochs[1]
    assert first.zone is None and first.scored_at is None and sorted(record.history.tables) == [1, 2]
    assert trainer.scoring_passes == 2  # after epochs 1 and 2, none after epoch 3
    assert (first.counts == 1).all()  # an epoch as large as the set draws every example once
    entry = plan_logs(trainer)[0]
    assert entry["zpd/epoch"] == 1 and entry["zpd/uniform"] == 1 and "zpd/scoring_seconds" not in entry
    # The guard's flags for epoch 2, written out: every example was drawn in epoch 1; it is flagged when the pass
    # after epoch 1 finds its loss not below what its training pass measured, and it is not below the level.
    after = record.history.tables[1]
    before = np.array([trainer._zpd_curriculum.first_losses[i] for i in range(48)])
    log_d = trainer._zpd_curriculum.log_difficulty(after)
    expected = (after.loss >= before) & (log_d >= log_d.mean())
    np.testing.assert_array_equal(record.epochs[2].out_of_reach, np.flatnonzero(expected))
    assert expected.any() and not expected.all()


def test_a_one_epoch_run_scores_nothing_and_says_the_curriculum_cannot_act(tokenizer, tmp_path, caplog):
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=1), trainer_class=CountingScoringPasses)
    with caplog.at_level(logging.WARNING, logger="hf_zpd.curriculum"):
        trainer.train()
    assert trainer.scoring_passes == 0 and not trainer.curriculum.history.tables
    assert sorted(trainer.curriculum.epochs) == [1] and trainer.curriculum.zones == {}
    assert "the curriculum does not act" in caplog.text and "epoch_fraction=None" in caplog.text
    # A budget that ends inside the first epoch (whole passes, the default) says so too; one that reaches a second
    # epoch does not.
    short = gpt2_trainer(tokenizer, config(tmp_path, "short", max_steps=4), trainer_class=CountingScoringPasses)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_zpd.curriculum"):
        short.train()
    assert short.scoring_passes == 0 and "trains 4 optimizer steps" in caplog.text
    longer = gpt2_trainer(tokenizer, config(tmp_path, "longer", max_steps=8), trainer_class=CountingScoringPasses)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hf_zpd.curriculum"):
        longer.train()
    assert longer.scoring_passes == 1 and "does not act" not in caplog.text


# ---- pruning ----


def test_pruning_shortens_every_epoch_by_a_fixed_count_and_records_the_weights(tokenizer, tmp_path):
    """48 examples, prune_fraction 0.5: every epoch has 48 - floor(48 x 0.25) = 36 samples (5 steps of 8), known
    before training; composed epochs leave out 12 mastered draws and weigh the kept mastered examples."""
    args = config(tmp_path, prune_fraction=0.5, anneal_fraction=0.0, save_strategy="epoch")
    trainer = gpt2_trainer(tokenizer, args)
    trainer.train()
    plain = gpt2_trainer(tokenizer, plain_config(tmp_path, max_steps=15), trainer_class=Trainer)
    plain.train()
    assert trainer.state.global_step == plain.state.global_step == 15
    rates = [[e["learning_rate"] for e in t.state.log_history if "learning_rate" in e] for t in (trainer, plain)]
    assert rates[0] == rates[1]
    record = trainer.curriculum
    assert all(draw.counts.sum() == 36 for draw in record.epochs.values())
    assert record.epochs[1].loss_weights is None  # the uniform epoch is not pruned
    for epoch in (2, 3):
        draw = record.epochs[epoch]
        assert draw.metrics["zpd/num_pruned"] == 12 and 0 < draw.metrics["zpd/prune_rate"] <= 1
        weighted = draw.loss_weights > 1
        assert weighted.any() and (draw.counts[weighted] > 0).all()
        assert draw.loss_weights[weighted] == pytest.approx(1 / (1 - draw.metrics["zpd/prune_rate"]))
    saved = load_curriculum(str(tmp_path / "run"))
    for epoch, draw in record.epochs.items():
        if draw.loss_weights is None:
            assert saved.epochs[epoch].loss_weights is None
        else:
            np.testing.assert_array_equal(saved.epochs[epoch].loss_weights, draw.loss_weights)


# ---- a budget under one pass: small epochs, chosen automatically ----


@pytest.mark.parametrize("budget", ["max_steps", "num_train_epochs"])
def test_a_budget_under_one_pass_trains_as_four_small_epochs_within_it(tokenizer, tmp_path, caplog, budget):
    """96 examples in batches of 8 are 12 steps a pass. A budget of 8 steps (max_steps=8, or num_train_epochs=2/3)
    becomes epochs of ceil(8 / 4) = 2 steps (16 samples): the same 8 steps and schedule as the plain Trainer, and
    every epoch after the first composed from a pool of 32 examples not drawn yet."""
    fields = {"max_steps": 8} if budget == "max_steps" else {"num_train_epochs": 2 / 3}
    with caplog.at_level(logging.INFO, logger="hf_zpd.trainer"):
        # The budget mode, epoch_fraction=None (not the default: the study found it does worse).
        trainer = gpt2_trainer(tokenizer, config(tmp_path, epoch_fraction=None, **fields), num_examples=96,
                               trainer_class=CountingScoringPasses)  # fmt: skip
        trainer.train()
    plain = gpt2_trainer(tokenizer, plain_config(tmp_path, **fields), num_examples=96, trainer_class=Trainer)
    plain.train()
    assert trainer.state.global_step == plain.state.global_step == 8
    rates = [[e["learning_rate"] for e in t.state.log_history if "learning_rate" in e] for t in (trainer, plain)]
    assert rates[0] == rates[1]
    record = trainer.curriculum
    assert record.settings["epoch_fraction"] == pytest.approx(16 / 96) and record.settings["scoring_pool_size"] == 32
    assert sorted(record.epochs) == [1, 2, 3, 4] and sorted(record.zones) == [2, 3, 4]
    assert all(draw.counts.sum() == 16 for draw in record.epochs.values())
    assert trainer.scoring_passes == 3 and "trains as epochs of 2 steps" in caplog.text
    drawn_in_1 = record.epochs[1].counts > 0
    scored_for_2 = ~np.isnan(record.history.tables[1].num_tokens)
    assert scored_for_2.sum() == 32 and not (scored_for_2 & drawn_in_1).any()  # 32 examples not drawn yet
    # The first small epoch is the start of the plain Trainer's first epoch: the same 16 examples, in its order.
    np.testing.assert_array_equal(np.flatnonzero(record.epochs[1].counts), np.sort(trainer_order(96, 16, 7, 1)))


@pytest.mark.parametrize("epochs", [1, 2])
def test_one_pass_or_more_keeps_whole_pass_epochs(tokenizer, tmp_path, epochs):
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=epochs), trainer_class=CountingScoringPasses)
    trainer.train()
    assert (
        trainer.curriculum.settings["epoch_fraction"] == 1.0
        and trainer.curriculum.settings["scoring_pool_size"] is None
    )
    assert trainer.state.global_step == 6 * epochs and trainer.scoring_passes == epochs - 1


# ---- model families and collators ----


@pytest.mark.parametrize("remove_unused_columns", [True, False])
def test_classifier_with_padding_collator(tokenizer, tmp_path, remove_unused_columns):
    dataset = classification_dataset(tokenizer, 40, keep_text=remove_unused_columns)
    trainer = ZPDTrainer(
        model=tiny_bert_classifier(len(tokenizer)),
        args=config(tmp_path, remove_unused_columns=remove_unused_columns),
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    logs = zpd_logs(trainer)
    assert len(logs) == 2
    assert trainer.curriculum.latest_scores.vocab_size == 3  # V is the number of classes
    assert trainer._zpd_curriculum.labels is not None  # classification: class-balanced epochs
    assert np.isfinite(trainer.curriculum.latest_scores.loss).all()
    assert (trainer.curriculum.latest_scores.num_tokens == 1).all()


def test_causal_lm_with_language_modeling_collator(tokenizer, tmp_path):
    """The collator makes the labels (padding -> -100); the index column survives it."""
    dataset = causal_lm_dataset(tokenizer, 40).remove_columns("labels")
    trainer = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=config(tmp_path),
        train_dataset=dataset,
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
    )
    trainer.train()
    assert len(zpd_logs(trainer)) == 2
    assert np.isfinite(trainer.curriculum.latest_scores.loss).all()


def test_encoder_decoder(tokenizer, tmp_path):
    model = tiny_t5(len(tokenizer))
    trainer = ZPDTrainer(
        model=model,
        args=config(tmp_path),
        train_dataset=seq2seq_dataset(tokenizer, 40),
        data_collator=DataCollatorForSeq2Seq(tokenizer, model=model),
    )
    trainer.train()
    assert len(zpd_logs(trainer)) == 2
    table = trainer.curriculum.latest_scores
    assert np.isfinite(table.loss).all() and table.vocab_size == len(tokenizer)


def test_plain_training_arguments_get_zpd_defaults(tokenizer, tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), num_train_epochs=2, report_to=[], use_cpu=True, seed=3)
    trainer = gpt2_trainer(tokenizer, args)
    assert isinstance(trainer.args, ZPDConfig)
    assert (trainer.args.band_lower, trainer.args.band_upper, trainer.args.seed) == (1.1, 1.3, 3)
    trainer.train()
    assert sorted(trainer.curriculum.zones) == [2]


# ---- logging ----


def documented_metrics() -> set[str]:
    text = README.read_text()
    section = text.split("## Logged metrics", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(zpd/[a-z_]+)`", section))


def test_every_logged_metric_is_documented_and_every_documented_one_is_logged(tokenizer, tmp_path):
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=3, min_zone_fraction=0.3))
    trainer.train()
    logged = {key for entry in trainer.state.log_history for key in entry if key.startswith("zpd/")}
    # The keys of the optional rules: the high-loss rule's bound, and pruning.
    optional = gpt2_trainer(tokenizer, config(tmp_path, "optional", out_of_reach="high_loss", prune_fraction=0.5,
                                              anneal_fraction=0.0))  # fmt: skip
    optional.train()
    extra = {key for entry in optional.state.log_history for key in entry if key.startswith("zpd/")} - logged
    assert extra == {"zpd/num_out_of_reach_capped", "zpd/num_pruned", "zpd/prune_rate", "zpd/prune_overflow"}
    # A classifier's label audit, and a reference model scored at train start.
    classifier = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), args=config(tmp_path, "classifier"),
                            train_dataset=classification_dataset(tokenizer, 40),
                            data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    classifier.train()
    reference = ZPDTrainer(model=tiny_gpt2(len(tokenizer), seed=1), reference_model=tiny_gpt2(len(tokenizer), seed=9),
                           args=config(tmp_path, "reference", difficulty_mode="reducible", max_steps=1),
                           train_dataset=causal_lm_dataset(tokenizer, 16, prompt_tokens=2),
                           data_collator=DataCollatorForSeq2Seq(tokenizer))  # fmt: skip
    reference.train()
    more = {key for run in (classifier, reference) for entry in run.state.log_history for key in entry
            if key.startswith("zpd/")} - logged - extra  # fmt: skip
    assert more == {"zpd/num_label_errors", "zpd/band_label_error_share", "zpd/reference_seconds"}
    assert logged | extra | more == documented_metrics()
    for entry in trainer.state.log_history:
        if "loss" in entry:
            assert math.isfinite(entry["zpd/running_ppl"]) and entry["zpd/running_ppl"] > 1


def test_running_ppl_is_the_moving_average_of_the_logged_losses(tokenizer, tmp_path):
    """exp of the moving average, computed here by hand from the Trainer's own logged `loss` of every step. A
    classifier has one supervised position per example, so its step loss is the token mean the running PPL averages."""
    trainer = ZPDTrainer(
        model=tiny_bert_classifier(len(tokenizer)),
        args=config(tmp_path, num_train_epochs=1, logging_steps=1, running_ppl_decay=0.5),
        train_dataset=classification_dataset(tokenizer, 40),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    steps = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(steps) == 5
    average = None
    for entry in steps:
        average = entry["loss"] if average is None else 0.5 * average + 0.5 * entry["loss"]
        # The Trainer rounds its logged loss to 4 decimals; the running PPL is computed from exact sums.
        assert entry["zpd/running_ppl"] == pytest.approx(math.exp(average), rel=5e-4)


# ---- the training-pass score source ----


class CountingScoringPasses(ZPDTrainer):
    """A ZPDTrainer that counts its scoring passes."""

    scoring_passes = 0

    def _score_pool(self, indices):
        self.scoring_passes += 1
        return super()._score_pool(indices)


@pytest.mark.slow
def test_training_pass_source_reuses_the_training_statistics(tokenizer, tmp_path):
    """With no dropout and a learning rate of 0 the model never changes and train mode computes what eval mode does,
    so the training passes' statistics must equal a scoring pass's, and the zones must be the same; and no scoring
    pass may run at all.

    The learnability guard is off: with a frozen model every loss stays put, and whether it "fell" between two passes
    would be decided by float rounding (a training batch pads differently from a scoring batch), and with the guard
    on this test failed in one CI run and passed in others. The training-pass source with the guard on (its one
    baseline scoring pass included) is covered by the next test and the 2-process resume test."""
    runs = {}
    for source in ("scoring_pass", "training_pass"):
        trainer = CountingScoringPasses(
            model=tiny_gpt2(len(tokenizer), dropout=0.0),
            args=config(
                tmp_path, source, learning_rate=0.0, score_source=source, num_train_epochs=3, out_of_reach="none"
            ),
            train_dataset=causal_lm_dataset(tokenizer, 48, prompt_tokens=2),
            data_collator=DataCollatorForSeq2Seq(tokenizer),
        )
        trainer.train()
        runs[source] = trainer
    scoring, training = runs["scoring_pass"], runs["training_pass"]
    assert scoring.scoring_passes == 2 and training.scoring_passes == 0
    # Epoch 1 drew every example once, so every example has training-pass statistics.
    for column in ("loss", "confidence", "entropy", "num_tokens"):
        np.testing.assert_allclose(
            getattr(training.curriculum.latest_scores, column),
            getattr(scoring.curriculum.latest_scores, column),
            rtol=1e-5,
            err_msg=column,
        )
    assert scoring.curriculum.zones.keys() == training.curriculum.zones.keys() == {2, 3}
    for epoch, draw in scoring.curriculum.epochs.items():
        np.testing.assert_array_equal(training.curriculum.epochs[epoch].counts, draw.counts)
    assert all(entry["zpd/rescored"] == 1.0 for entry in zpd_logs(training))


@pytest.mark.slow
def test_training_pass_source_keeps_the_latest_statistics_of_each_example(tokenizer, tmp_path):
    """Epoch 2 skips some examples: those it drew get statistics from epoch 2, the others keep epoch 1's; and no
    scoring pass runs at all (the guard compares the training passes of consecutive epochs)."""
    trainer = gpt2_trainer(
        tokenizer,
        config(tmp_path, score_source="training_pass", num_train_epochs=3),
        trainer_class=CountingScoringPasses,
    )
    trainer.train()
    record = trainer.curriculum
    assert trainer.scoring_passes == 0 and record.epochs[1].scored_at is None
    after_epoch_1, after_epoch_2 = record.scores_for(2), record.scores_for(3)
    trained_in_epoch_2 = np.unique(trainer._zpd_sampler.epoch_indices(2))
    others = np.setdiff1d(np.arange(48), trained_in_epoch_2)
    assert others.size > 0
    np.testing.assert_array_equal(after_epoch_2.loss[others], after_epoch_1.loss[others])
    assert not np.allclose(after_epoch_2.loss[trained_in_epoch_2], after_epoch_1.loss[trained_in_epoch_2])


def test_score_source_is_validated(tmp_path):
    with pytest.raises(ValueError, match="ZPDConfig.score_source"):
        config(tmp_path, score_source="eval_pass")


# ---- resume ----


RESUME_SETTINGS = {
    "default": dict(),
    "replay-ga2-fraction": dict(
        gradient_accumulation_steps=2,
        replay_fraction=0.25,
        epoch_fraction=0.75,
        score_before_training=True,
        save_steps=2,
    ),
    "pool-cadence": dict(scoring_pool_size=30, rescore_every=2, num_train_epochs=4),
    "weighted-fill-composite": dict(fill="weighted", difficulty_mode="composite", anneal_fraction=0.4),
    "seed-rule": dict(composition="zone_only"),
    # The training passes' statistics since the last zone are part of the checkpoint.
    "training-pass-source": dict(score_source="training_pass", num_train_epochs=4),
    # The new rules: loss weights of pruned epochs, flags from the loss mixture, a rising band, an easy share.
    "prune-highloss-rising": dict(prune_fraction=0.5, out_of_reach="high_loss", pacing="rising", anneal_fraction=0.0),
    "easy-first": dict(composition="easy_first"),
    "budget-under-one-pass": dict(max_steps=5, num_train_epochs=1, save_steps=1, epoch_fraction=None),
}


@pytest.mark.slow
@pytest.mark.parametrize("setting", list(RESUME_SETTINGS))
def test_resume_from_any_checkpoint_is_bitwise_identical(tokenizer, tmp_path, setting):
    """Interrupted at any checkpoint (mid-epoch, or on an epoch's last step) and resumed: same zones, same weights."""
    overrides = dict(save_strategy="steps", save_steps=3) | RESUME_SETTINGS[setting]
    full = gpt2_trainer(tokenizer, config(tmp_path, "full", **overrides))
    full.train()
    expected_weights, expected_epochs = final_weights(full.model), full.curriculum.epochs
    checkpoints = sorted((tmp_path / "full").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    assert len(checkpoints) >= 4
    for checkpoint in checkpoints[:-1]:
        assert (checkpoint / STATE_NAME).is_file() and (checkpoint / RECORD_NAME).is_file()
        resumed = gpt2_trainer(tokenizer, config(tmp_path, f"resumed-{checkpoint.name}", **overrides))
        resumed.train(resume_from_checkpoint=str(checkpoint))
        assert resumed.curriculum.epochs.keys() == expected_epochs.keys(), checkpoint.name
        for epoch, draw in expected_epochs.items():
            got = resumed.curriculum.epochs[epoch]
            np.testing.assert_array_equal(got.counts, draw.counts, err_msg=f"{checkpoint.name} {epoch}")
            np.testing.assert_array_equal(got.out_of_reach, draw.out_of_reach, err_msg=f"{checkpoint.name} {epoch}")
        assert_bitwise_equal(final_weights(resumed.model), expected_weights)


@pytest.mark.slow
@pytest.mark.parametrize(
    "setting", [dict(rescore_every=2, num_train_epochs=4), dict(score_source="training_pass", num_train_epochs=4)]
)
def test_a_classifier_with_the_label_audit_resumes_bitwise(tokenizer, tmp_path, setting):
    """The audit's list is drawn from class probabilities: a resumed epoch composed from scores the record kept (a
    later recomposition, or the training passes laid over an earlier pass) must see the same probabilities."""
    dataset = classification_dataset(tokenizer, 48)
    labels = np.array(dataset["label"])
    labels[::3] = (labels[::3] + 1) % 3  # a third of the labels wrong: the audit lists examples
    dataset = dataset.remove_columns("label").add_column("label", labels.tolist())

    def classifier(name):
        return ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), train_dataset=dataset,
                          args=config(tmp_path, name, save_strategy="steps", save_steps=3, **setting),
                          data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip

    full = classifier("full")
    full.train()
    listed = [d.metrics.get("zpd/num_label_errors", 0) for d in full.curriculum.epochs.values()]
    assert max(listed) > 0, "the audit listed examples, so it shaped the draws"
    checkpoints = sorted((tmp_path / "full").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    for checkpoint in checkpoints[:-1]:
        resumed = classifier(f"resumed-{checkpoint.name}")
        resumed.train(resume_from_checkpoint=str(checkpoint))
        for epoch, draw in full.curriculum.epochs.items():
            got = resumed.curriculum.epochs[epoch]
            np.testing.assert_array_equal(got.counts, draw.counts, err_msg=checkpoint.name)
            np.testing.assert_array_equal(got.out_of_reach, draw.out_of_reach, err_msg=checkpoint.name)
            timeless = {k: v for k, v in draw.metrics.items() if k != "zpd/scoring_seconds"}
            assert {k: v for k, v in got.metrics.items() if k != "zpd/scoring_seconds"} == timeless, checkpoint.name
        assert_bitwise_equal(final_weights(resumed.model), final_weights(full.model))


@pytest.mark.slow
def test_same_seed_same_run(tokenizer, tmp_path):
    first = gpt2_trainer(tokenizer, config(tmp_path, "first"))
    first.train()
    second = gpt2_trainer(tokenizer, config(tmp_path, "second"))
    second.train()
    assert_bitwise_equal(final_weights(first.model), final_weights(second.model))
    other_seed = gpt2_trainer(tokenizer, config(tmp_path, "third", seed=8))
    other_seed.train()
    assert not np.array_equal(other_seed._zpd_sampler.epoch_indices(2), first._zpd_sampler.epoch_indices(2))


def test_resume_from_plain_trainer_checkpoint_rescores(tokenizer, tmp_path, caplog):
    plain_args = plain_config(tmp_path, save_strategy="steps", save_steps=9)
    gpt2_trainer(tokenizer, plain_args, trainer_class=Trainer).train()
    checkpoint = tmp_path / "plain" / "checkpoint-9"  # in the middle of the second epoch
    assert not (checkpoint / STATE_NAME).exists()
    trainer = gpt2_trainer(tokenizer, config(tmp_path, "zpd"))
    from transformers.utils import logging as hf_logging

    hf_logging.get_logger("hf_zpd.trainer").addHandler(caplog.handler)
    trainer.train(resume_from_checkpoint=str(checkpoint))
    assert "has no curriculum state" in caplog.text
    assert sorted(trainer.curriculum.zones) == [2, 3]
    assert trainer.state.global_step == 18


def test_resume_refuses_state_of_another_dataset_size(tokenizer, tmp_path):
    trainer = gpt2_trainer(tokenizer, config(tmp_path, "full", save_strategy="epoch"))
    trainer.train()
    other = gpt2_trainer(tokenizer, config(tmp_path, "other"), num_examples=40)
    with pytest.raises(ValueError, match="written for a training set of 48 examples, but the training set now has 40"):
        other.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))


# ---- bad input ----


def test_dataset_without_labels_is_refused(tokenizer, tmp_path):
    dataset = classification_dataset(tokenizer, 16).remove_columns("label")
    trainer = ZPDTrainer(
        model=tiny_bert_classifier(len(tokenizer)),
        args=config(tmp_path),
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    with pytest.raises(ValueError, match="needs labels to score examples"):
        trainer.train()


def test_iterable_dataset_is_refused(tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 16).to_iterable_dataset()
    trainer = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=config(tmp_path, max_steps=2),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    with pytest.raises(ValueError, match="needs a map-style training dataset"):
        trainer.train()


@pytest.mark.parametrize("strategy", ["group_by_length", "sequential", "batch_rebalance"])
def test_sampling_strategies_it_cannot_honour_are_refused(tokenizer, tmp_path, strategy):
    with pytest.raises(ValueError, match=f"cannot honour train_sampling_strategy='{strategy}'"):
        gpt2_trainer(tokenizer, config(tmp_path, train_sampling_strategy=strategy))


def test_examples_without_supervised_tokens_never_poison_the_ppl(tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 40, prompt_tokens=2)
    silent = set(range(0, 40, 5))
    dataset = dataset.map(
        lambda row, index: {"labels": [-100] * len(row["labels"]) if index in silent else row["labels"]},
        with_indices=True,
    )
    trainer = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=config(tmp_path, per_device_train_batch_size=5),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    trainer.train()
    for entry in trainer.state.log_history:
        for key, value in entry.items():
            if key.startswith("zpd/"):
                assert math.isfinite(value), (key, entry)
    logs = zpd_logs(trainer)
    assert all(log["zpd/num_no_targets"] == len(silent) for log in logs)
    assert all(log["zpd/num_nonfinite"] == 0 for log in logs)
    for zone in trainer.curriculum.zones.values():
        assert not silent & set(zone.tolist())


def test_all_examples_without_targets_fail_clearly(tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 16).map(lambda row: {"labels": [-100] * len(row["labels"])})
    trainer = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=config(tmp_path, num_train_epochs=2),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    with pytest.raises(RuntimeError, match="16 have no supervised token"):
        trainer.train()


def test_nonfinite_logits_are_excluded_and_counted(tokenizer, tmp_path):
    """Examples whose logits are NaN in the scoring pass are counted and never selected."""
    dataset = classification_dataset(tokenizer, 40)
    poisoned = {3, 17, 22}
    dataset = dataset.map(lambda row, index: {"poisoned": int(index in poisoned)}, with_indices=True)
    model = tiny_bert_classifier(len(tokenizer))
    marks = {}

    def remember(module, args, kwargs):
        marks["rows"] = kwargs.pop("poisoned", None)
        return args, kwargs

    def poison(module, args, output):
        if not module.training and marks["rows"] is not None:
            output.logits[marks["rows"].bool()] = float("nan")
        return output

    model.register_forward_pre_hook(remember, with_kwargs=True)
    model.register_forward_hook(poison)
    trainer = ZPDTrainer(
        model=model,
        args=config(tmp_path, remove_unused_columns=False),
        train_dataset=dataset,
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    trainer.train()
    logs = zpd_logs(trainer)
    assert all(log["zpd/num_nonfinite"] == 3 for log in logs)
    assert all(math.isfinite(log["zpd/ppl"]) for log in logs)
    for zone in trainer.curriculum.zones.values():
        assert not poisoned & set(zone.tolist())


def test_training_batch_with_nonfinite_logits_does_not_poison_running_ppl(tokenizer, tmp_path):
    trainer = ZPDTrainer(
        model=tiny_bert_classifier(len(tokenizer)),
        args=config(tmp_path),
        train_dataset=classification_dataset(tokenizer, 16),
        data_collator=DataCollatorWithPadding(tokenizer),
    )

    def overflow(module, args, output):
        output.logits[:2] = float("inf")

    handle = trainer.model.register_forward_hook(overflow)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(6)])
    trainer.model.train()
    trainer.compute_loss(trainer.model, dict(batch))
    handle.remove()
    window = dict(zip(("loss_sum", "num_tokens"), trainer._zpd_monitor.window[:2].tolist(), strict=True))
    assert trainer._zpd_monitor.window[6].item() == 2  # two non-finite examples counted
    assert trainer._zpd_monitor.window[5].item() == 4  # four finite ones averaged
    assert math.isfinite(window["loss_sum"]) and window["num_tokens"] == 4


def test_model_without_logits_is_refused(tokenizer, tmp_path):
    class LossOnly(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids=None, attention_mask=None, labels=None):
            return {"loss": self.inner(input_ids=input_ids, attention_mask=attention_mask, labels=labels).loss}

    trainer = ZPDTrainer(
        model=LossOnly(tiny_bert_classifier(len(tokenizer))),
        args=config(tmp_path),
        train_dataset=classification_dataset(tokenizer, 16),
        data_collator=DataCollatorWithPadding(tokenizer),
    )
    with pytest.raises(ValueError, match="needs the model's logits"):
        trainer.train()


def test_reserved_index_column_is_refused(tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 8).add_column("zpd_index", list(range(8)))
    trainer = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=config(tmp_path),
        train_dataset=dataset,
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    with pytest.raises(ValueError, match="already has a column named 'zpd_index'"):
        trainer.train()


def test_torch_map_style_dataset_of_dicts(tokenizer, tmp_path):
    """A plain torch Dataset (not datasets.Dataset) gets its index through a wrapper."""
    rows = [dict(row) for row in causal_lm_dataset(tokenizer, 24)]

    class Rows(torch.utils.data.Dataset):
        def __len__(self):
            return len(rows)

        def __getitem__(self, index):
            return rows[index]

    trainer = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=config(tmp_path),
        train_dataset=Rows(),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    trainer.train()
    assert np.isfinite(trainer.curriculum.latest_scores.loss).all()


def test_run_scoring_pass_gathers_in_dataset_order_on_one_process(tokenizer):
    """The function on its own, with a real accelerator and an index order that is not the dataset order."""
    from accelerate import Accelerator

    model = tiny_gpt2(len(tokenizer))
    dataset = causal_lm_dataset(tokenizer, 10).add_column("zpd_index", list(range(10)))
    collator = DataCollatorForSeq2Seq(tokenizer)

    def forward(model, batch):
        from hf_zpd.statistics import align_causal_labels, per_example_statistics

        labels = batch.pop("labels")
        logits, labels = align_causal_labels(model(**batch).logits, labels)
        return per_example_statistics(logits, labels)

    table, seconds = run_scoring_pass(
        model, dataset, [[7, 2, 9], [0, 5]], collator, forward, Accelerator(cpu=True), 10, show_progress=False
    )
    assert seconds > 0
    assert np.isnan(table.loss[[1, 3, 4, 6, 8]]).all()
    assert np.isfinite(table.loss[[0, 2, 5, 7, 9]]).all()


def test_launcher_processes_that_did_not_join_a_group_are_refused(tokenizer, tmp_path, monkeypatch):
    """torchrun/accelerate started 2 processes but the Trainer sees 1 (no --use_cpu on a CPU machine)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    assert args.world_size == 1
    with pytest.raises(ValueError, match="pass --use_cpu"):
        gpt2_trainer(tokenizer, args)


def test_empty_dataset_is_refused(tokenizer, tmp_path):
    empty = causal_lm_dataset(tokenizer, 4).select([])
    trainer = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=config(tmp_path),
        train_dataset=empty,
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    with pytest.raises(ValueError, match="The training dataset is empty"):
        trainer.train()


def test_dataset_of_one_example(tokenizer, tmp_path):
    trainer = gpt2_trainer(tokenizer, config(tmp_path), num_examples=1)
    output = trainer.train()
    assert output.global_step == 3
    assert {epoch: zone.tolist() for epoch, zone in trainer.curriculum.zones.items()} == {2: [0], 3: [0]}
    assert all(log["zpd/num_selected"] == 1 for log in zpd_logs(trainer))


def test_no_metric_is_logged_as_nan_before_training(tokenizer, tmp_path):
    trainer = gpt2_trainer(tokenizer, config(tmp_path, num_train_epochs=1, score_before_training=True))
    trainer.train()
    first = zpd_logs(trainer)[0]
    assert first["zpd/epoch"] == 1 and "zpd/running_ppl" not in first
    assert all(math.isfinite(value) for key, value in first.items())
