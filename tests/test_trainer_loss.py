"""`ZPDTrainer.compute_loss` returns exactly the plain Trainer's loss, and records the method's statistics."""

import copy
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from builders import (
    causal_lm_dataset,
    classification_dataset,
    seq2seq_dataset,
    tiny_bert_classifier,
    tiny_gpt2,
    tiny_llama,
    tiny_t5,
)
from transformers import DataCollatorForSeq2Seq, DataCollatorWithPadding, Trainer, TrainingArguments

from hf_zpd import ZPDConfig, ZPDTrainer, per_example_statistics
from hf_zpd.statistics import align_causal_labels


def family(name, tokenizer):
    """(model, dataset, collator) for one model family; padded batches, and -100 in the LM labels."""
    vocab = len(tokenizer)
    if name == "gpt2":  # causal LM with a masked prompt and right padding
        return tiny_gpt2(vocab), causal_lm_dataset(tokenizer, 16, prompt_tokens=2), DataCollatorForSeq2Seq(tokenizer)
    if name == "llama":
        return tiny_llama(vocab), causal_lm_dataset(tokenizer, 16, prompt_tokens=3), DataCollatorForSeq2Seq(tokenizer)
    if name == "bert":
        return tiny_bert_classifier(vocab), classification_dataset(tokenizer, 16), DataCollatorWithPadding(tokenizer)
    if name == "t5":
        model = tiny_t5(vocab)
        return model, seq2seq_dataset(tokenizer, 16), DataCollatorForSeq2Seq(tokenizer, model=model)
    raise ValueError(name)


def run_micro_batches(trainer_class, model, dataset, collator, tmp_path, accumulation, smoothing, **zpd_fields):
    """One optimizer step's worth of `training_step` calls, as `Trainer._run_epoch` makes them."""
    args = (ZPDConfig if zpd_fields or trainer_class is not Trainer else TrainingArguments)(
        **zpd_fields,
        output_dir=str(tmp_path / trainer_class.__name__),
        per_device_train_batch_size=4,
        gradient_accumulation_steps=accumulation,
        label_smoothing_factor=smoothing,
        report_to=[],
        use_cpu=True,
    )
    trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=collator)
    rows = [dataset[i] for i in range(4 * accumulation)]
    batches = [collator(rows[i : i + 4]) for i in range(0, len(rows), 4)]
    num_items = trainer._get_num_items_in_batch(batches, trainer.args.device)
    trainer.current_gradient_accumulation_steps = len(batches)
    torch.manual_seed(1234)  # the same dropout masks for both trainers
    losses = [trainer.training_step(trainer.model, dict(batch), num_items) for batch in batches]
    gradients = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return trainer, losses, gradients


@pytest.mark.parametrize("smoothing", [0.0, 0.1], ids=["no-smoothing", "label-smoothing"])
@pytest.mark.parametrize("accumulation", [1, 2], ids=["ga1", "ga2"])
@pytest.mark.parametrize("name", ["gpt2", "llama", "bert", "t5"])
@pytest.mark.parametrize("path", ["standard", "default"])
def test_loss_and_gradients_equal_plain_trainer(path, name, accumulation, smoothing, tokenizer, tmp_path):
    """The standard path (`fused_cross_entropy=False`) returns the Trainer's loss and gradients bitwise. The default
    also does, except where it takes the fused head (GPT-2 and Llama without label smoothing): equal to float
    rounding there."""
    model, dataset, collator = family(name, tokenizer)
    _, plain_losses, plain_gradients = run_micro_batches(
        Trainer, copy.deepcopy(model), dataset, collator, tmp_path, accumulation, smoothing
    )
    fields = {"fused_cross_entropy": False} if path == "standard" else {}
    zpd, zpd_losses, zpd_gradients = run_micro_batches(
        ZPDTrainer, copy.deepcopy(model), dataset, collator, tmp_path, accumulation, smoothing, **fields
    )
    fused = path == "default" and name in ("gpt2", "llama") and smoothing == 0.0
    assert zpd._uses_fused_head == fused
    same = (lambda a, b: torch.allclose(a, b, rtol=1e-5, atol=1e-7)) if fused else torch.equal
    for plain, ours in zip(plain_losses, zpd_losses, strict=True):
        assert same(plain, ours), f"loss {ours.item()} != Trainer's {plain.item()}"
    assert plain_gradients.keys() == zpd_gradients.keys()
    for key in plain_gradients:
        assert same(plain_gradients[key], zpd_gradients[key]), key
    # The statistics were recorded along the way, from real supervised tokens.
    assert zpd._zpd_monitor.window[1].item() > 0
    assert zpd._zpd_monitor.step_totals[1].item() > 0


def reference_statistics(logits, labels):
    """Naive per-example loop in float64."""
    rows = []
    for example_logits, example_labels in zip(logits.double(), labels, strict=True):
        kept = example_labels != -100
        probabilities = torch.softmax(example_logits[kept], dim=-1)
        targets = example_labels[kept]
        loss = -torch.log(probabilities[torch.arange(targets.numel()), targets]).mean()
        confidence = probabilities.max(dim=-1).values.mean()
        entropy = (-(probabilities * torch.log(probabilities)).sum(-1) / math.log(logits.shape[-1])).mean()
        rows.append((loss.item(), confidence.item(), entropy.item(), int(kept.sum())))
    return rows


@pytest.mark.parametrize("name", ["gpt2", "bert", "t5"])
def test_training_statistics_match_reference(name, tokenizer, tmp_path):
    """The statistics recorded during training are the method's, from the same forward as the loss."""
    model, dataset, collator = family(name, tokenizer)
    model.eval()  # no dropout, so a second forward gives the same logits
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    trainer = ZPDTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    batch = collator([dataset[i] for i in range(5)])
    recorded = []
    trainer._zpd_monitor.record = recorded.append
    model.training = True  # compute_loss records only in training; dropout modules stay in eval
    trainer.compute_loss(model, dict(batch))
    model.training = False
    (stats,) = recorded
    with torch.no_grad():
        logits = model(**batch).logits
    labels = batch["labels"]
    if name == "gpt2":
        logits, labels = align_causal_labels(logits, labels)
    expected = reference_statistics(logits, labels)
    torch.testing.assert_close(stats.loss, torch.tensor([r[0] for r in expected], dtype=torch.float64))
    torch.testing.assert_close(stats.confidence, torch.tensor([r[1] for r in expected], dtype=torch.float64))
    torch.testing.assert_close(stats.entropy, torch.tensor([r[2] for r in expected], dtype=torch.float64))
    assert stats.num_tokens.tolist() == [r[3] for r in expected]
    # And the same as the library function applied to the aligned logits.
    torch.testing.assert_close(per_example_statistics(logits, labels).loss, stats.loss)


# ---- the fused path (fused_cross_entropy) ----


@pytest.mark.parametrize("accumulation", [1, 2], ids=["ga1", "ga2"])
@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_fused_path_equals_plain_trainer(name, accumulation, tokenizer, tmp_path):
    """The fused loss and gradients equal the plain Trainer's to float rounding (1e-5), and so do the statistics."""
    model, dataset, collator = family(name, tokenizer)
    _, plain_losses, plain_gradients = run_micro_batches(
        Trainer, copy.deepcopy(model), dataset, collator, tmp_path, accumulation, 0.0
    )
    fused, fused_losses, fused_gradients = run_micro_batches(
        ZPDTrainer, copy.deepcopy(model), dataset, collator, tmp_path, accumulation, 0.0, fused_cross_entropy=True
    )
    for plain, ours in zip(plain_losses, fused_losses, strict=True):
        torch.testing.assert_close(ours, plain, rtol=1e-5, atol=1e-5)
    assert plain_gradients.keys() == fused_gradients.keys()
    for key in plain_gradients:
        torch.testing.assert_close(fused_gradients[key], plain_gradients[key], rtol=1e-4, atol=1e-6, msg=key)
    assert fused._zpd_monitor.step_totals[1].item() > 0  # the fused statistics fed the running PPL
    assert fused.model.lm_head.__class__.__name__ == "Linear", "the real lm_head is back after every step"


def test_fused_path_statistics_match_reference(tokenizer, tmp_path):
    model, dataset, collator = family("gpt2", tokenizer)
    model.eval()  # no dropout, so a second forward gives the same logits
    args = ZPDConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, fused_cross_entropy=True)
    trainer = ZPDTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    batch = collator([dataset[i] for i in range(5)])
    recorded = []
    trainer._zpd_monitor.record = recorded.append
    model.training = True  # compute_loss takes the fused path only in training; dropout modules stay in eval
    trainer.compute_loss(model, dict(batch))
    model.training = False
    (stats,) = recorded
    with torch.no_grad():
        logits, labels = align_causal_labels(model(**batch).logits, batch["labels"])
    expected = reference_statistics(logits, labels)
    torch.testing.assert_close(stats.loss, torch.tensor([r[0] for r in expected], dtype=torch.float64))
    torch.testing.assert_close(stats.confidence, torch.tensor([r[1] for r in expected], dtype=torch.float64))
    torch.testing.assert_close(stats.entropy, torch.tensor([r[2] for r in expected], dtype=torch.float64))
    assert stats.num_tokens.tolist() == [r[3] for r in expected]


@pytest.mark.parametrize(
    "name, overrides, message",
    [
        ("bert", {}, "it is a classifier"),
        ("t5", {}, "it is an encoder-decoder"),
        ("gpt2", {"label_smoothing_factor": 0.1}, "label smoothing"),
    ],
)
def test_fused_path_is_refused_where_it_would_change_the_loss(name, overrides, message, tokenizer, tmp_path):
    model, dataset, collator = family(name, tokenizer)
    args = ZPDConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, fused_cross_entropy=True, **overrides)
    with pytest.raises(ValueError, match=message):
        ZPDTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)


@pytest.mark.slow
def test_fused_training_run_follows_the_standard_run(tokenizer, tmp_path):
    """Three epochs with the curriculum: the same zones, and weights equal to float rounding."""
    runs = {}
    for fused in (False, True):
        model, dataset, collator = family("gpt2", tokenizer)
        args = ZPDConfig(
            output_dir=str(tmp_path / str(fused)),
            num_train_epochs=3,
            per_device_train_batch_size=4,
            learning_rate=1e-3,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            save_strategy="no",
            seed=3,
            fused_cross_entropy=fused,
        )
        trainer = ZPDTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
        trainer.train()
        runs[fused] = trainer
    standard, fused = runs[False], runs[True]
    assert standard.curriculum.zones.keys() == fused.curriculum.zones.keys() == {2, 3}
    for epoch, zone in standard.curriculum.zones.items():
        assert zone.tolist() == fused.curriculum.zones[epoch].tolist()
    for (name, left), right in zip(
        standard.model.state_dict().items(), fused.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(right, left, rtol=1e-4, atol=1e-5, msg=name)


# ---- weighted losses: pruning (per example) and token selection (per token), against naive references ----


def weighted_step(trainer, batch, weights, num_items):
    """One training_step with these per-example weights as the curriculum would give them for the batch."""
    from hf_zpd.curriculum import Curriculum

    class Fixed(Curriculum):
        def __init__(self):
            pass

        def loss_weights(self, epoch):
            return weights

        def observe(self, index, step, stats):
            pass

    trainer._zpd_curriculum = Fixed()
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(0)
    inputs = dict(batch, zpd_index=torch.arange(len(weights)))
    loss = trainer.training_step(trainer.model, inputs, num_items)
    gradients = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return loss, gradients


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_pruning_weights_each_examples_loss(name, tokenizer, tmp_path):
    """The weighted loss is sum_i w_i CE_i over the Trainer's own normaliser: the mean for a classifier, the count
    of supervised tokens (num_items_in_batch) for a causal LM (fused head)."""
    _, dataset, collator = family(name, tokenizer)
    # No dropout: the naive reference runs the same forward (training_step puts the model in train mode).
    model = (
        tiny_bert_classifier(len(tokenizer), dropout=0.0) if name == "bert" else tiny_gpt2(len(tokenizer), dropout=0.0)
    )
    args = ZPDConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, prune_fraction=0.5)
    trainer = ZPDTrainer(model=copy.deepcopy(model), args=args, train_dataset=dataset, data_collator=collator)
    trainer.model.eval()
    batch = collator([dataset[i] for i in range(4)])
    weights = np.array([2.0, 1.0, 0.5, 1.5])
    num_items = trainer._get_num_items_in_batch([batch], trainer.args.device)
    loss, gradients = weighted_step(trainer, batch, weights, num_items)

    reference = copy.deepcopy(model)
    outputs = reference(**{k: v for k, v in batch.items() if k != "labels"})
    labels = batch["labels"]
    if name == "bert":
        per_example = F.cross_entropy(outputs.logits, labels, reduction="none")
        expected = (per_example * torch.as_tensor(weights, dtype=per_example.dtype)).sum() / len(weights)
    else:
        logits, shifted = align_causal_labels(outputs.logits, labels)
        per_token = F.cross_entropy(logits.transpose(1, 2), shifted, reduction="none", ignore_index=-100)  # (B, T)
        per_example = per_token.sum(dim=1)
        expected = (per_example * torch.as_tensor(weights, dtype=per_example.dtype)).sum() / num_items
    expected.backward()
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    for parameter_name, parameter in reference.named_parameters():
        if parameter.grad is not None:
            torch.testing.assert_close(gradients[parameter_name], parameter.grad, rtol=1e-4, atol=1e-6)


def test_token_selection_trains_on_the_tokens_of_highest_excess_loss(tokenizer, tmp_path):
    """Rho-1: the loss is the mean over the top share of tokens by (learner - reference) loss."""
    _, dataset, collator = family("gpt2", tokenizer)
    model = tiny_gpt2(len(tokenizer), dropout=0.0)
    reference_model = tiny_gpt2(len(tokenizer), seed=9, dropout=0.0)
    args = ZPDConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, token_selection_fraction=0.5)
    trainer = ZPDTrainer(model=copy.deepcopy(model), args=args, train_dataset=dataset, data_collator=collator,
                         reference_model=reference_model)  # fmt: skip
    trainer.model.eval()
    batch = collator([dataset[i] for i in range(4)])
    num_items = trainer._get_num_items_in_batch([batch], trainer.args.device)
    trainer.current_gradient_accumulation_steps = 1
    trainer._zpd_alignment = "shifted"
    loss = trainer.training_step(trainer.model, dict(batch), num_items)

    def token_losses(network):
        logits, shifted = align_causal_labels(network(input_ids=batch["input_ids"]).logits, batch["labels"])
        mask = shifted != -100
        return F.cross_entropy(logits[mask], shifted[mask], reduction="none")

    learner = copy.deepcopy(model)
    mine = token_losses(learner)
    with torch.no_grad():
        excess = mine.detach() - token_losses(reference_model)
    keep = torch.topk(excess, math.ceil(0.5 * excess.numel())).indices
    expected = mine[keep].sum() / 0.5 / num_items
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    expected.backward()
    for parameter_name, parameter in learner.named_parameters():
        if parameter.grad is not None:
            actual = dict(trainer.model.named_parameters())[parameter_name].grad
            torch.testing.assert_close(actual, parameter.grad, rtol=1e-4, atol=1e-6)


def test_weighing_settings_that_cannot_apply_are_refused(tokenizer, tmp_path):
    def make(model, **fields):
        return ZPDTrainer(model=model, args=ZPDConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, **fields))

    with pytest.raises(ValueError, match="pass reference_model"):
        make(tiny_gpt2(len(tokenizer)), token_selection_fraction=0.6)
    with pytest.raises(ValueError, match="through the fused causal-LM head, which is off"):
        ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), reference_model=tiny_gpt2(len(tokenizer)),
                   args=ZPDConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True,
                                  token_selection_fraction=0.6))  # fmt: skip
    with pytest.raises(ValueError, match="label smoothing and compute_loss_func replace"):
        make(tiny_bert_classifier(len(tokenizer)), prune_fraction=0.5, label_smoothing_factor=0.1)
