"""`ZPDTrainer.compute_loss` returns exactly the plain Trainer's loss, and records the METHOD.md statistics."""

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

from hf_zpd import ZPDTrainer, per_example_statistics
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


def run_micro_batches(trainer_class, model, dataset, collator, tmp_path, accumulation, smoothing):
    """One optimizer step's worth of `training_step` calls, as `Trainer._run_epoch` makes them."""
    args = TrainingArguments(
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
def test_loss_and_gradients_equal_plain_trainer(name, accumulation, smoothing, tokenizer, tmp_path):
    model, dataset, collator = family(name, tokenizer)
    _, plain_losses, plain_gradients = run_micro_batches(
        Trainer, copy.deepcopy(model), dataset, collator, tmp_path, accumulation, smoothing
    )
    zpd, zpd_losses, zpd_gradients = run_micro_batches(
        ZPDTrainer, copy.deepcopy(model), dataset, collator, tmp_path, accumulation, smoothing
    )
    for plain, ours in zip(plain_losses, zpd_losses, strict=True):
        assert torch.equal(plain, ours), f"loss {ours.item()} != Trainer's {plain.item()}"
    assert plain_gradients.keys() == zpd_gradients.keys()
    for key in plain_gradients:
        assert torch.equal(plain_gradients[key], zpd_gradients[key]), key
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
    """The statistics recorded during training are METHOD.md's, from the same forward as the loss."""
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
