"""Drop-in for the setups people really run: any collator, LoRA (peft), any causal LM, gradient checkpointing and
torch.compile. Every test trains through at least one scoring pass (the end of the first epoch), where a collator
that drops the index column or a wrong causal shift used to fail or go wrong."""

import copy
import math

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
    tiny_llama,
    tiny_t5,
)
from peft import LoraConfig, get_peft_model
from torch.nn.utils.rnn import pad_sequence
from transformers import (
    BatchEncoding,
    BertConfig,
    BertForTokenClassification,
    DataCollatorForLanguageModeling,
    DataCollatorForSeq2Seq,
    DataCollatorWithPadding,
    PretrainedConfig,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    default_data_collator,
)
from transformers.modeling_outputs import CausalLMOutput, TokenClassifierOutput

from hf_zpd import ZPDConfig, ZPDTrainer
from hf_zpd.alignment import ALIGNED, SHIFTED, alignment_from_probe


def config(tmp_path, name="run", **overrides) -> ZPDConfig:
    values = dict(
        output_dir=str(tmp_path / name),
        num_train_epochs=2,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=8,
        learning_rate=5e-3,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=7,
    )
    values.update(overrides)
    return ZPDConfig(**values)


# ---- any collator ----


def hand_written_classification(features):
    """The most common hand-written collate function: a fresh dict of the keys it knows, nothing else."""
    ids = [torch.tensor(f["input_ids"]) for f in features]
    return {
        "input_ids": pad_sequence(ids, batch_first=True, padding_value=0),
        "attention_mask": pad_sequence([torch.ones_like(i) for i in ids], batch_first=True),
        "labels": torch.tensor([f["label"] for f in features]),
    }


def batch_encoding_collator(tokenizer):
    def collate(features):
        padded = tokenizer.pad([{"input_ids": f["input_ids"]} for f in features], return_tensors="pt")
        padded["labels"] = torch.tensor([f["label"] for f in features])
        return BatchEncoding(dict(padded))

    return collate


def fixed_length_classification(tokenizer, num_examples):
    """Rows padded to one length, for default_data_collator (which stacks without padding)."""
    dataset = classification_dataset(tokenizer, num_examples)
    return dataset.map(lambda row: tokenizer.pad({"input_ids": row["input_ids"]}, padding="max_length", max_length=16))


COLLATORS = ["hand_written", "batch_encoding", "default_data_collator", "with_padding", "seq2seq", "language_modeling"]


def collator_setup(name, tokenizer):
    vocab = len(tokenizer)
    if name == "hand_written":
        return tiny_bert_classifier(vocab), classification_dataset(tokenizer, 40), hand_written_classification
    if name == "batch_encoding":
        return tiny_bert_classifier(vocab), classification_dataset(tokenizer, 40), batch_encoding_collator(tokenizer)
    if name == "default_data_collator":
        return tiny_bert_classifier(vocab), fixed_length_classification(tokenizer, 40), default_data_collator
    if name == "with_padding":
        return tiny_bert_classifier(vocab), classification_dataset(tokenizer, 40), DataCollatorWithPadding(tokenizer)
    if name == "seq2seq":
        return tiny_gpt2(vocab), causal_lm_dataset(tokenizer, 40, prompt_tokens=2), DataCollatorForSeq2Seq(tokenizer)
    if name == "language_modeling":
        dataset = causal_lm_dataset(tokenizer, 40).remove_columns("labels")
        return tiny_gpt2(vocab), dataset, DataCollatorForLanguageModeling(tokenizer, mlm=False)
    raise ValueError(name)


@pytest.mark.parametrize("remove_unused_columns", [True, False], ids=["remove_unused", "keep_columns"])
@pytest.mark.parametrize("name", COLLATORS)
def test_any_collator_keeps_the_index_through_the_scoring_pass(name, remove_unused_columns, tokenizer, tmp_path):
    model, dataset, collator = collator_setup(name, tokenizer)
    args = config(tmp_path, remove_unused_columns=remove_unused_columns)
    trainer = ZPDTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator)
    trainer.train()
    table = trainer.curriculum.scores_for(2)
    assert np.isfinite(table.loss).all() and (table.num_tokens > 0).all()  # every example scored at its own row
    assert trainer.curriculum.epochs[2].counts.sum() == 40 and trainer.curriculum.zones[2].size > 0


def test_the_users_collator_is_handed_back_unchanged(tokenizer, tmp_path):
    model, dataset, collator = collator_setup("hand_written", tokenizer)
    trainer = ZPDTrainer(model=model, args=config(tmp_path), train_dataset=dataset, data_collator=collator)
    trainer.train()
    assert trainer.data_collator is collator


def test_a_collator_that_drops_the_labels_fails_at_train_start(tokenizer, tmp_path):
    def no_labels(features):
        return {k: v for k, v in hand_written_classification(features).items() if k != "labels"}

    trainer = ZPDTrainer(
        model=tiny_bert_classifier(len(tokenizer)),
        args=config(tmp_path, save_strategy="steps", save_steps=1),
        train_dataset=classification_dataset(tokenizer, 16),
        data_collator=no_labels,
    )
    with pytest.raises(ValueError, match="needs labels to score examples, but the training batch has no 'labels'"):
        trainer.train()
    assert trainer.state.global_step == 0 and not list((tmp_path / "run").glob("checkpoint-*"))


def test_a_collator_that_packs_examples_into_one_row_is_refused(tokenizer, tmp_path):
    from transformers import DataCollatorWithFlattening

    trainer = ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=config(tmp_path),
        train_dataset=causal_lm_dataset(tokenizer, 16),
        data_collator=DataCollatorWithFlattening(),
    )
    with pytest.raises(ValueError, match=r"put \d+ examples into 1 rows: it packs several examples"):
        trainer.train()


def test_a_collator_that_returns_a_tuple_is_refused_clearly(tokenizer, tmp_path):
    def as_tuple(features):
        batch = hand_written_classification(features)
        return batch["input_ids"], batch["labels"]

    trainer = ZPDTrainer(
        model=tiny_bert_classifier(len(tokenizer)),
        args=config(tmp_path),
        train_dataset=classification_dataset(tokenizer, 16),
        data_collator=as_tuple,
    )
    with pytest.raises(TypeError, match="returned a tuple"):
        trainer.train()


# ---- the label alignment, decided from the model ----


class TinyCausalConfig(PretrainedConfig):
    model_type = "hf-zpd-tiny-causal"

    def __init__(self, vocab_size=40, hidden_size=16, **kwargs):
        super().__init__(**kwargs)
        self.vocab_size, self.hidden_size = vocab_size, hidden_size


class TinyCausalLM(PreTrainedModel):
    """A causal LM transformers has never heard of (no mapping entry, no GenerationMixin): its own loss shifts."""

    config_class = TinyCausalConfig

    def __init__(self, config):
        super().__init__(config)
        self.embed = torch.nn.Embedding(config.vocab_size, config.hidden_size)
        self.mix = torch.nn.Linear(2 * config.hidden_size, config.hidden_size)
        self.head = torch.nn.Linear(config.hidden_size, config.vocab_size)
        self.post_init()
        with torch.no_grad():  # far from uniform, so that the two readings of its logits differ clearly
            self.head.weight.normal_(0.0, 1.0)

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        hidden = self.embed(input_ids)
        previous = torch.nn.functional.pad(hidden, (0, 0, 1, 0))[:, :-1]  # causal: sees tokens t and t - 1
        logits = self.head(torch.tanh(self.mix(torch.cat([hidden, previous], dim=-1))))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
            )
        return CausalLMOutput(loss=loss, logits=logits)


class TinyTagger(TinyCausalLM):
    """A token tagger of the same shape, not in any mapping: its own loss does not shift."""

    def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
        logits = self.head(torch.tanh(self.embed(input_ids)))
        loss = None
        if labels is not None:
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100
            )
        return TokenClassifierOutput(loss=loss, logits=logits)


def lora(model, targets):
    return get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, task_type="CAUSAL_LM"))


def alignment_setup(name, tokenizer):
    vocab = len(tokenizer)
    lm_data, lm_collator = causal_lm_dataset(tokenizer, 12, prompt_tokens=2), DataCollatorForSeq2Seq(tokenizer)
    if name == "gpt2":
        return tiny_gpt2(vocab), lm_data, lm_collator, SHIFTED
    if name == "llama":
        return tiny_llama(vocab), lm_data, lm_collator, SHIFTED
    if name == "lora_gpt2":
        return lora(tiny_gpt2(vocab), ["c_attn"]), lm_data, lm_collator, SHIFTED
    if name == "lora_llama":
        return lora(tiny_llama(vocab), ["q_proj", "v_proj"]), lm_data, lm_collator, SHIFTED
    if name == "custom_causal":
        torch.manual_seed(0)
        return TinyCausalLM(TinyCausalConfig(vocab_size=vocab)), lm_data, lm_collator, SHIFTED
    if name == "custom_tagger":
        torch.manual_seed(0)
        return TinyTagger(TinyCausalConfig(vocab_size=vocab)), lm_data, lm_collator, ALIGNED
    if name == "bert_tokens":
        torch.manual_seed(0)
        bert = BertForTokenClassification(BertConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=32, num_labels=vocab))  # fmt: skip
        return bert, lm_data, lm_collator, ALIGNED
    if name == "bert":
        return (
            tiny_bert_classifier(vocab),
            classification_dataset(tokenizer, 12),
            DataCollatorWithPadding(tokenizer),
            ALIGNED,
        )
    if name == "t5":
        model = tiny_t5(vocab)
        return model, seq2seq_dataset(tokenizer, 12), DataCollatorForSeq2Seq(tokenizer, model=model), ALIGNED
    raise ValueError(name)


def own_losses(model, dataset, collator) -> list[float]:
    """Each example's loss as the model itself computes it: one example per forward, so its mean is the example's."""
    model.eval()
    losses = []
    with torch.no_grad():
        for index in range(len(dataset)):
            batch = collator([{k: v for k, v in dataset[index].items() if k != "text"}])
            losses.append(float(model(**batch).loss))
    return losses


ALIGNMENT_CASES = [
    "gpt2",
    "llama",
    "lora_gpt2",
    "lora_llama",
    "custom_causal",
    "custom_tagger",
    "bert_tokens",
    "bert",
    "t5",
]


@pytest.mark.parametrize("name", ALIGNMENT_CASES)
def test_scores_equal_the_models_own_per_example_loss(name, tokenizer, tmp_path):
    model, dataset, collator, expected = alignment_setup(name, tokenizer)
    trainer = ZPDTrainer(model=model, args=config(tmp_path), data_collator=collator)
    scores = trainer.score_dataset(dataset)
    assert trainer._zpd_alignment == expected
    np.testing.assert_allclose(scores["loss"], own_losses(model, dataset, collator), rtol=1e-5, atol=1e-6)


def test_the_probe_tells_the_readings_apart_and_admits_when_it_cannot():
    torch.manual_seed(0)
    logits, labels = torch.randn(2, 6, 11), torch.randint(0, 11, (2, 6))
    shifted = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 11), labels[:, 1:].reshape(-1))
    aligned = torch.nn.functional.cross_entropy(logits.reshape(-1, 11), labels.reshape(-1))
    assert alignment_from_probe(logits, labels, float(shifted)) == SHIFTED
    assert alignment_from_probe(logits, labels, float(aligned)) == ALIGNED
    assert alignment_from_probe(logits, labels, None) is None
    assert alignment_from_probe(logits, labels, float(shifted) + 0.5) is None  # matches neither
    flat = torch.zeros(2, 6, 11)  # an untrained, uniform model: both readings give log V
    assert alignment_from_probe(flat, labels, math.log(11)) is None


def test_label_alignment_overrides_the_rule(tokenizer, tmp_path):
    model, dataset, collator, _ = alignment_setup("custom_causal", tokenizer)
    trainer = ZPDTrainer(model=model, args=config(tmp_path, label_alignment="aligned"), data_collator=collator)
    scores = trainer.score_dataset(dataset)
    assert trainer._zpd_alignment == ALIGNED
    assert not np.allclose(scores["loss"], own_losses(model, dataset, collator), rtol=1e-3)


def test_a_model_whose_alignment_cannot_be_told_is_refused_with_the_fix(tokenizer, tmp_path):
    class LossLessCausal(TinyCausalLM):  # no loss to probe with, no mapping entry, cannot generate
        def forward(self, input_ids=None, attention_mask=None, labels=None, **kwargs):
            return CausalLMOutput(logits=super().forward(input_ids).logits)

    torch.manual_seed(0)
    model = LossLessCausal(TinyCausalConfig(vocab_size=len(tokenizer)))
    trainer = ZPDTrainer(model=model, args=config(tmp_path), data_collator=DataCollatorForSeq2Seq(tokenizer))
    with pytest.raises(ValueError, match="Set ZPDConfig.label_alignment to 'shifted'"):
        trainer.score_dataset(causal_lm_dataset(tokenizer, 8))


# ---- LoRA training with the curriculum ----


def lora_run(trainer_class, args, tokenizer, dataset):
    torch.manual_seed(0)
    model = lora(tiny_llama(len(tokenizer)), ["q_proj", "v_proj"])
    return trainer_class(
        model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForSeq2Seq(tokenizer)
    )


@pytest.mark.parametrize("accumulation", [1, 2], ids=["ga1", "ga2"])
def test_lora_loss_and_gradients_equal_the_plain_trainers(accumulation, tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 16, prompt_tokens=2)
    collator = DataCollatorForSeq2Seq(tokenizer)
    results = {}
    for trainer_class, args_class in ((Trainer, TrainingArguments), (ZPDTrainer, ZPDConfig)):
        args = args_class(
            output_dir=str(tmp_path / trainer_class.__name__),
            per_device_train_batch_size=4,
            gradient_accumulation_steps=accumulation,
            report_to=[],
            use_cpu=True,
            # The standard path, bitwise the Trainer's (the default's fused head is compared in the next tests).
            **({"fused_cross_entropy": False} if args_class is ZPDConfig else {}),
        )
        trainer = lora_run(trainer_class, args, tokenizer, dataset)
        batches = [collator([dataset[i] for i in range(s, s + 4)]) for s in range(0, 4 * accumulation, 4)]
        num_items = trainer._get_num_items_in_batch(batches, trainer.args.device)
        torch.manual_seed(1234)
        losses = [trainer.training_step(trainer.model, dict(batch), num_items) for batch in batches]
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        results[trainer_class] = losses, grads
    (plain_losses, plain_grads), (our_losses, our_grads) = results[Trainer], results[ZPDTrainer]
    assert all(torch.equal(a, b) for a, b in zip(plain_losses, our_losses, strict=True))
    assert plain_grads.keys() == our_grads.keys() and all("lora" in name for name in plain_grads)
    assert all(torch.equal(plain_grads[name], our_grads[name]) for name in plain_grads)


@pytest.mark.slow
def test_lora_training_takes_the_plain_trainers_steps_and_resumes_bitwise(tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 32, prompt_tokens=2)
    common = dict(num_train_epochs=3, per_device_train_batch_size=8, learning_rate=5e-3, report_to=[], use_cpu=True,
                  disable_tqdm=True, seed=7, save_strategy="steps", save_steps=3, logging_steps=1)  # fmt: skip
    plain = lora_run(Trainer, TrainingArguments(output_dir=str(tmp_path / "plain"), **common), tokenizer, dataset)
    plain.train()
    full = lora_run(ZPDTrainer, ZPDConfig(output_dir=str(tmp_path / "full"), **common), tokenizer, dataset)
    full.train()
    assert full.state.global_step == plain.state.global_step == 12
    rates = [[e["learning_rate"] for e in t.state.log_history if "learning_rate" in e] for t in (plain, full)]
    assert rates[0] == rates[1]
    assert full._zpd_alignment == SHIFTED and sorted(full.curriculum.zones) == [2, 3]
    resumed = lora_run(ZPDTrainer, ZPDConfig(output_dir=str(tmp_path / "resumed"), **common), tokenizer, dataset)
    resumed.train(resume_from_checkpoint=str(tmp_path / "full" / "checkpoint-6"))
    assert_bitwise_equal(final_weights(resumed.model), final_weights(full.model))


def test_fused_path_with_lora_equals_the_standard_path(tokenizer, tmp_path):
    """peft's wrapper forwards to the transformers model inside it, whose lm_head the fused head replaces."""
    dataset = causal_lm_dataset(tokenizer, 16, prompt_tokens=2)
    collator = DataCollatorForSeq2Seq(tokenizer)
    outcomes = {}
    for fused in (False, True):
        trainer = lora_run(
            ZPDTrainer, config(tmp_path, f"fused-{fused}", fused_cross_entropy=fused), tokenizer, dataset
        )
        trainer._zpd_alignment = SHIFTED
        trainer.current_gradient_accumulation_steps = 1  # set by the Trainer's epoch loop, which this skips
        batch = collator([dataset[i] for i in range(8)])
        torch.manual_seed(3)
        loss = trainer.training_step(trainer.model, dict(batch), None)
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
        outcomes[fused] = loss, grads, trainer._zpd_monitor.step_totals.clone()
    (loss, grads, totals), (fused_loss, fused_grads, fused_totals) = outcomes[False], outcomes[True]
    torch.testing.assert_close(fused_loss, loss, rtol=1e-5, atol=1e-6)
    for name in grads:
        torch.testing.assert_close(fused_grads[name], grads[name], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fused_totals, totals, rtol=1e-5, atol=1e-6)  # the statistics' loss sum and tokens


def test_fused_path_refuses_a_lora_adapter_on_the_lm_head(tokenizer, tmp_path):
    model = lora(tiny_llama(len(tokenizer)), ["q_proj", "lm_head"])
    with pytest.raises(ValueError, match="needs a plain `nn.Linear` `lm_head`"):
        ZPDTrainer(
            model=model,
            args=config(tmp_path, fused_cross_entropy=True),
            data_collator=DataCollatorForSeq2Seq(tokenizer),
        )


FUSED_DEFAULT_CASES = {
    "gpt2": (lambda vocab: tiny_gpt2(vocab), {}, True),
    "llama": (lambda vocab: tiny_llama(vocab), {}, True),
    "lora-llama": (lambda vocab: lora(tiny_llama(vocab), ["q_proj", "v_proj"]), {}, True),
    "set-off": (lambda vocab: tiny_gpt2(vocab), {"fused_cross_entropy": False}, False),
    "bert-classifier": (lambda vocab: tiny_bert_classifier(vocab), {}, False),
    "t5": (lambda vocab: tiny_t5(vocab), {}, False),
    "custom-causal-class": (lambda vocab: TinyCausalLM(TinyCausalConfig(vocab_size=vocab)), {}, False),
    "lora-on-lm-head": (lambda vocab: lora(tiny_llama(vocab), ["q_proj", "lm_head"]), {}, False),
    "label-smoothing": (lambda vocab: tiny_gpt2(vocab), {"label_smoothing_factor": 0.1}, False),
    "torch-compile": (lambda vocab: tiny_gpt2(vocab), {"torch_compile": True}, False),
}


@pytest.mark.parametrize("case", list(FUSED_DEFAULT_CASES))
def test_the_fused_head_is_the_default_where_it_is_safe(case, tokenizer, tmp_path):
    build, fields, expected = FUSED_DEFAULT_CASES[case]
    trainer = ZPDTrainer(model=build(len(tokenizer)), args=config(tmp_path, **fields))
    assert trainer._uses_fused_head is expected


def test_fused_cross_entropy_true_where_it_does_not_apply_is_an_error(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="does not support BertForSequenceClassification: it is a classifier"):
        ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), args=config(tmp_path, fused_cross_entropy=True))


def test_a_prompt_learning_peft_model_is_refused_at_train_start(tokenizer, tmp_path):
    from peft import PromptTuningConfig

    model = get_peft_model(tiny_gpt2(len(tokenizer)), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    trainer = ZPDTrainer(model=model, args=config(tmp_path), train_dataset=causal_lm_dataset(tokenizer, 16),
                         data_collator=DataCollatorForSeq2Seq(tokenizer))  # fmt: skip
    with pytest.raises(ValueError, match="does not support the peft method PROMPT_TUNING: prompt-learning methods"):
        trainer.train()
    assert trainer.state.global_step == 0


# ---- gradient checkpointing and torch.compile ----


@pytest.mark.parametrize("with_lora", [False, True], ids=["full", "lora"])
def test_gradient_checkpointing_keeps_the_plain_trainers_loss(with_lora, tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 24, prompt_tokens=2)
    collator = DataCollatorForSeq2Seq(tokenizer)
    losses = {}
    for trainer_class, args_class in ((Trainer, TrainingArguments), (ZPDTrainer, ZPDConfig)):
        torch.manual_seed(0)
        model = tiny_llama(len(tokenizer))
        model = lora(model, ["q_proj", "v_proj"]) if with_lora else model
        args = args_class(output_dir=str(tmp_path / trainer_class.__name__), gradient_checkpointing=True,
                          num_train_epochs=2, per_device_train_batch_size=8, learning_rate=5e-3, report_to=[],
                          use_cpu=True, disable_tqdm=True, seed=7, logging_steps=1)  # fmt: skip
        trainer = trainer_class(model=model, args=args, train_dataset=dataset, data_collator=collator)
        trainer.train()
        losses[trainer_class] = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    # Epoch 1 draws the Trainer's batches in the Trainer's order, so its losses are the Trainer's (the default's fused
    # head: to float rounding; the Trainer logs 4 significant decimals); then the curriculum takes over.
    assert len(losses[Trainer]) == len(losses[ZPDTrainer]) == 6
    assert losses[ZPDTrainer][:3] == pytest.approx(losses[Trainer][:3], rel=1e-3)
    assert all(math.isfinite(v) for v in losses[ZPDTrainer])
    assert trainer._zpd_alignment == SHIFTED and trainer.curriculum.zones[2].size > 0


@pytest.mark.slow
def test_torch_compile_trains_with_the_curriculum(tokenizer, tmp_path):
    dataset = causal_lm_dataset(tokenizer, 24, prompt_tokens=2)
    collator = DataCollatorForSeq2Seq(tokenizer)
    model = tiny_gpt2(len(tokenizer))
    trainer = ZPDTrainer(
        model=model, args=config(tmp_path, torch_compile=True), train_dataset=dataset, data_collator=collator
    )
    trainer.train()
    assert type(trainer.model_wrapped).__name__ == "OptimizedModule"
    assert trainer._zpd_alignment == SHIFTED and trainer.curriculum.zones[2].size > 0
    # Scoring through the compiled model gives each example the plain model's own loss.
    scores = trainer.score_dataset(dataset)
    plain = copy.deepcopy(trainer.accelerator.unwrap_model(trainer.model, keep_torch_compile=False))
    np.testing.assert_allclose(scores["loss"], own_losses(plain, dataset, collator), rtol=1e-4)


# ---- the swap costs nothing: the Trainer's forwards, in the Trainer's order ----


class IndexedVectors(torch.utils.data.Dataset):
    """Ten random vectors whose first coordinate is their own index, with a class label (transformers'
    `test_resume_batch_order` data)."""

    def __init__(self, size: int = 10):
        generator = torch.Generator().manual_seed(0)
        self.data = torch.randn((size, 10), generator=generator)
        self.data[:, 0] = torch.arange(size)
        self.labels = torch.randint(0, 10, (size,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return {"input_ids": self.data[index], "labels": self.labels[index]}


class ForwardRecordingModel(torch.nn.Module):
    """Keeps, in buffers that checkpoints save, the index of every example it ever ran a forward on and whether it was
    in training mode (transformers' `test_resume_batch_order` model, which a hidden extra forward would fail)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(10, 10, bias=False)
        self.register_buffer("data_order", torch.empty(0, dtype=torch.long))
        self.register_buffer("training_flags", torch.empty(0, dtype=torch.bool))

    def load_state_dict(self, state_dict, strict=True, **kwargs):
        for name in ("data_order", "training_flags"):  # the buffers grow: take the checkpoint's size
            if name in state_dict:
                setattr(self, name, state_dict[name].clone())
        return super().load_state_dict(state_dict, strict=strict, **kwargs)

    def forward(self, input_ids, labels=None):
        logits = self.fc(input_ids)
        loss = None if labels is None else torch.nn.functional.cross_entropy(logits, labels)
        seen = input_ids[:, 0].long().detach().clone()
        self.data_order = torch.cat([self.data_order.clone(), seen])
        self.training_flags = torch.cat([self.training_flags.clone(), torch.full_like(seen, self.training).bool()])
        return {"loss": loss, "logits": logits}


def recorded_forwards(trainer_class, tmp_path, name, num_train_epochs, resume_from=None):
    values = dict(output_dir=str(tmp_path / name), seed=42, learning_rate=0.1, per_device_train_batch_size=2,
                  save_strategy="steps", save_steps=1, num_train_epochs=num_train_epochs, optim="sgd",
                  disable_tqdm=True, report_to=[], use_cpu=True)  # fmt: skip
    args = ZPDConfig(**values) if trainer_class is ZPDTrainer else TrainingArguments(**values)
    torch.manual_seed(42)
    trainer = trainer_class(model=ForwardRecordingModel(), args=args, train_dataset=IndexedVectors())
    trainer.train(resume_from_checkpoint=resume_from)
    model = trainer.model
    return model.data_order.tolist(), model.training_flags.tolist()


def test_a_model_that_records_its_forwards_sees_the_trainers_forwards(tmp_path):
    """One epoch: ZPDTrainer runs exactly the Trainer's forwards, on the same examples in the same order, also when
    resumed in the middle of the epoch (no check forward, no scoring pass, the Trainer's shuffle)."""
    plain = recorded_forwards(Trainer, tmp_path, "plain", 1)
    ours = recorded_forwards(ZPDTrainer, tmp_path, "zpd", 1)
    assert ours == plain and len(plain[0]) == 10 and all(plain[1])
    resumed = recorded_forwards(ZPDTrainer, tmp_path, "zpd-resumed", 1, resume_from=str(tmp_path / "zpd/checkpoint-2"))
    assert resumed == plain


def test_resume_batch_order_over_several_epochs(tmp_path):
    """transformers' `test_resume_batch_order` with ZPDTrainer: 3 epochs, resumed in the middle of the second; the
    resumed run's forwards are the uninterrupted run's, scoring passes included. Epoch 1's training forwards are the
    plain Trainer's."""
    full_order, full_modes = recorded_forwards(ZPDTrainer, tmp_path, "zpd", 3)
    resumed = recorded_forwards(ZPDTrainer, tmp_path, "resumed", 3, resume_from=str(tmp_path / "zpd/checkpoint-6"))
    assert resumed == (full_order, full_modes)
    plain_order, _ = recorded_forwards(Trainer, tmp_path, "plain", 3)
    assert full_order[:10] == plain_order[:10] and all(full_modes[:10])
    # Then one scoring pass of the 10 examples (eval mode) after epochs 1 and 2, and none after epoch 3.
    assert full_modes.count(False) == 20 and len(full_order) == 50
