"""`ZPDSFTTrainer`: TRL's SFTTrainer with the curriculum, on a tiny Llama with a chat template."""

import numpy as np
import pytest
import torch
from builders import build_chat_tokenizer, chat_dataset, tiny_llama
from datasets import Dataset
from trl import SFTConfig, SFTTrainer

from hf_zpd import ZPDArguments, ZPDSFTConfig, ZPDSFTTrainer
from hf_zpd.statistics import align_causal_labels, per_example_statistics


@pytest.fixture(scope="module")
def chat_tokenizer():
    return build_chat_tokenizer()


def values(tmp_path, name, **overrides) -> dict:
    settings = dict(
        output_dir=str(tmp_path / name),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        learning_rate=5e-3,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        save_strategy="no",
        logging_steps=1,
        assistant_only_loss=True,
        max_length=64,
        seed=3,
    )
    settings.update(overrides)
    return settings


def trainer_pair(chat_tokenizer, tmp_path, dataset=None, **overrides):
    dataset = dataset if dataset is not None else chat_dataset(24)
    plain = SFTTrainer(
        model=tiny_llama(len(chat_tokenizer)),
        args=SFTConfig(**values(tmp_path, "plain", **overrides)),
        train_dataset=dataset,
        processing_class=chat_tokenizer,
    )
    ours = ZPDSFTTrainer(
        model=tiny_llama(len(chat_tokenizer)),
        args=ZPDSFTConfig(**values(tmp_path, "zpd", **overrides)),
        train_dataset=dataset,
        processing_class=chat_tokenizer,
    )
    return plain, ours


def one_step(trainer, rows):
    batch = trainer.data_collator(rows)
    num_items = trainer._get_num_items_in_batch([batch], trainer.args.device)
    trainer.current_gradient_accumulation_steps = 1
    torch.manual_seed(11)
    loss = trainer.training_step(trainer.model, dict(batch), num_items)
    grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    return batch, loss, grads


def test_the_loss_and_gradients_are_sfttrainers_own(chat_tokenizer, tmp_path):
    plain, ours = trainer_pair(chat_tokenizer, tmp_path)
    rows = [plain.train_dataset[i] for i in range(8)]
    ours._zpd_alignment = "shifted"  # decided at train start; this drives training_step by hand
    _, plain_loss, plain_grads = one_step(plain, rows)
    _, our_loss, our_grads = one_step(ours, [{**row} for row in rows])
    assert torch.equal(plain_loss, our_loss)
    assert plain_grads.keys() == our_grads.keys()
    assert all(torch.equal(plain_grads[name], our_grads[name]) for name in plain_grads)


@pytest.mark.parametrize("mask", ["assistant_only", "completion_only"])
def test_statistics_follow_trls_loss_mask(mask, chat_tokenizer, tmp_path):
    """Per-example statistics over exactly the tokens TRL's loss counts: the assistant turn, or the completion."""
    if mask == "assistant_only":
        dataset, overrides = chat_dataset(16), {}
    else:
        rows = chat_dataset(16)["messages"]
        dataset = Dataset.from_dict({"prompt": [[m[0]] for m in rows], "completion": [[m[1]] for m in rows]})
        overrides = {"assistant_only_loss": False, "completion_only_loss": True}
    _, ours = trainer_pair(chat_tokenizer, tmp_path, dataset, **overrides)
    ours._zpd_alignment = "shifted"
    recorded = []
    ours._zpd_monitor.record = recorded.append
    ours.model.eval()  # no dropout: the reference forward below sees the same logits
    ours.model.training = True  # compute_loss records statistics only in training
    batch = ours.data_collator([ours.train_dataset[i] for i in range(6)])
    ours.compute_loss(ours.model, dict(batch))
    ours.model.training = False
    (stats,) = recorded
    labels = batch["labels"]
    supervised = (labels[:, 1:] != -100).sum(dim=1)
    prompt_tokens = (labels == -100).sum(dim=1) - (batch["attention_mask"] == 0).sum(dim=1)
    assert (prompt_tokens > 0).all()  # the mask really hides the prompt
    assert stats.num_tokens.tolist() == supervised.tolist()
    with torch.no_grad():
        logits = ours.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    reference = per_example_statistics(*align_causal_labels(logits, labels))
    for name in ("loss", "confidence", "entropy"):
        torch.testing.assert_close(getattr(stats, name), getattr(reference, name), rtol=1e-5, atol=1e-6)


def test_training_runs_the_curriculum_and_keeps_trls_metrics(chat_tokenizer, tmp_path):
    _, ours = trainer_pair(chat_tokenizer, tmp_path, num_train_epochs=3)
    ours.train()
    assert ours._zpd_alignment == "shifted" and sorted(ours.curriculum.zones) == [2, 3]
    table = ours.curriculum.latest_scores
    assert np.isfinite(table.loss).all() and (table.num_tokens > 0).all()
    train_logs = [e for e in ours.state.log_history if "loss" in e]
    for key in ("entropy", "mean_token_accuracy", "num_tokens", "zpd/running_ppl", "zpd/train_confidence"):
        assert all(key in entry for entry in train_logs), key
    # The statistics ride along with the loss: their token-mean CE is the loss SFTTrainer logged (one GA step).
    for entry in train_logs:
        assert entry["zpd/train_loss"] == pytest.approx(entry["loss"], rel=1e-3)
    assert "hf_zpd" in ours.model.model_tags and "sft" in ours.model.model_tags


@pytest.mark.parametrize("setting", ["packing", "padding_free"])
def test_packed_or_padding_free_batches_are_refused_at_construction(setting, chat_tokenizer, tmp_path):
    with pytest.raises(ValueError, match=f"cannot train with {setting}=True"):
        ZPDSFTTrainer(
            model=tiny_llama(len(chat_tokenizer)),
            args=ZPDSFTConfig(**values(tmp_path, "packed", **{setting: True, "assistant_only_loss": False})),
            train_dataset=chat_dataset(8),
            processing_class=chat_tokenizer,
        )


def test_a_plain_sftconfig_gets_the_zpd_defaults(chat_tokenizer, tmp_path):
    trainer = ZPDSFTTrainer(
        model=tiny_llama(len(chat_tokenizer)),
        args=SFTConfig(**values(tmp_path, "plain_config")),
        train_dataset=chat_dataset(8),
        processing_class=chat_tokenizer,
    )
    assert isinstance(trainer.args, ZPDSFTConfig) and trainer.args.assistant_only_loss
    assert trainer.args.zone_repeats == ZPDArguments().zone_repeats


def test_fused_cross_entropy_is_refused_with_the_reason(chat_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="fused LM head of its own"):
        ZPDSFTTrainer(
            model=tiny_llama(len(chat_tokenizer)),
            args=ZPDSFTConfig(**values(tmp_path, "fused", fused_cross_entropy=True)),
            train_dataset=chat_dataset(8),
            processing_class=chat_tokenizer,
        )
