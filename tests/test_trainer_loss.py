"""`ZPDTrainer.compute_loss` returns exactly the plain Trainer's loss, and records the method's statistics."""

import copy
import math

import pytest
import torch
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
    assert zpd._window[1].item() > 0
    assert zpd._step_totals[1].item() > 0


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
    trainer._record_training_statistics = recorded.append
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
    assert fused._step_totals[1].item() > 0  # the fused statistics fed the running PPL
    assert fused.model.lm_head.__class__.__name__ == "Linear", "the real lm_head is back after every step"


def test_fused_path_statistics_match_reference(tokenizer, tmp_path):
    model, dataset, collator = family("gpt2", tokenizer)
    model.eval()  # no dropout, so a second forward gives the same logits
    args = ZPDConfig(output_dir=str(tmp_path), report_to=[], use_cpu=True, fused_cross_entropy=True)
    trainer = ZPDTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    batch = collator([dataset[i] for i in range(5)])
    recorded = []
    trainer._record_training_statistics = recorded.append
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
