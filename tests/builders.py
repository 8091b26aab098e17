"""Builders for tests: tiny real models built from configs, a real word-level tokenizer, real `datasets.Dataset`s.

Everything is built offline in code; no Hub access.
"""

from __future__ import annotations

import numpy as np
import torch
from datasets import Dataset
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import Whitespace
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    T5Config,
    T5ForConditionalGeneration,
)

WORDS = (
    "good great fine happy love nice bad awful sad hate poor ugly the a cat dog sat ran on under mat log "
    "quickly slowly very not and but red blue green big small old new".split()
)
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[BOS]", "[EOS]"]


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A real fast tokenizer (word level, 40 tokens) built in code."""
    vocab = {token: index for index, token in enumerate(SPECIAL + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        bos_token="[BOS]",
        eos_token="[EOS]",
    )


def sentences(num_examples: int, seed: int = 0) -> tuple[list[str], list[int]]:
    """Sentences of 3 to 15 words and a 3-class label that depends on the words (so a model can learn it)."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for _ in range(num_examples):
        words = rng.choice(WORDS, size=int(rng.integers(3, 16))).tolist()
        positive = sum(w in WORDS[:6] for w in words)
        negative = sum(w in WORDS[6:12] for w in words)
        texts.append(" ".join(words))
        labels.append(0 if positive > negative else 1 if negative > positive else 2)
    return texts, labels


def classification_dataset(tokenizer, num_examples: int = 48, seed: int = 0, keep_text: bool = False) -> Dataset:
    texts, labels = sentences(num_examples, seed)
    dataset = Dataset.from_dict({"text": texts, "label": labels})
    dataset = dataset.map(lambda batch: tokenizer(batch["text"]), batched=True)
    return dataset if keep_text else dataset.remove_columns("text")


def causal_lm_dataset(tokenizer, num_examples: int = 48, seed: int = 0, prompt_tokens: int = 0) -> Dataset:
    """Token ids with explicit labels; the first `prompt_tokens` positions are masked with -100 (SFT style)."""
    texts, _ = sentences(num_examples, seed)
    encoded = tokenizer(texts)
    labels = [[-100] * min(prompt_tokens, len(ids)) + ids[prompt_tokens:] for ids in encoded["input_ids"]]
    return Dataset.from_dict(
        {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"], "labels": labels}
    )


def seq2seq_dataset(tokenizer, num_examples: int = 48, seed: int = 0) -> Dataset:
    texts, _ = sentences(num_examples, seed)
    sources = tokenizer(texts)
    targets = tokenizer([" ".join(reversed(text.split()))[: 5 * 6] for text in texts])
    return Dataset.from_dict(
        {
            "input_ids": sources["input_ids"],
            "attention_mask": sources["attention_mask"],
            "labels": targets["input_ids"],
        }
    )


def tiny_gpt2(vocab_size: int, seed: int = 0, dropout: float = 0.1) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=64,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=dropout,
        embd_pdrop=dropout,
        attn_pdrop=dropout,
        bos_token_id=4,
        eos_token_id=5,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(config)


def tiny_llama(vocab_size: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        bos_token_id=4,
        eos_token_id=5,
        pad_token_id=0,
    )
    return LlamaForCausalLM(config)


def tiny_bert_classifier(vocab_size: int, num_labels: int = 3, seed: int = 0, dropout: float = 0.1):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
        pad_token_id=0,
    )
    return BertForSequenceClassification(config)


def tiny_t5(vocab_size: int, seed: int = 0) -> T5ForConditionalGeneration:
    torch.manual_seed(seed)
    config = T5Config(
        vocab_size=vocab_size,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=5,
    )
    return T5ForConditionalGeneration(config)


def final_weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def assert_bitwise_equal(left: dict[str, torch.Tensor], right: dict[str, torch.Tensor]) -> None:
    assert left.keys() == right.keys()
    different = [name for name in left if not torch.equal(left[name], right[name])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


# ---- a tiny chat setup for TRL's SFTTrainer ----

CHAT_SPECIAL = ["<pad>", "<unk>", "<s>", "</s>", "<user>", "<assistant>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '<user> ' + message['content'] + ' ' }}"
    "{% else %}{{ '<assistant> ' }}{% generation %}{{ message['content'] + ' </s>' }}{% endgeneration %}{{ ' ' }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<assistant> ' }}{% endif %}"
)


def build_chat_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level fast tokenizer with user/assistant role tokens and a chat template that marks the assistant turn
    with `{% generation %}` (what TRL's `assistant_only_loss=True` needs)."""
    vocab = {token: index for index, token in enumerate(CHAT_SPECIAL + WORDS)}
    backend = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def chat_dataset(num_examples: int = 32, seed: int = 0) -> Dataset:
    """Conversations: a user sentence, and an assistant reply that says its sentiment in words."""
    texts, labels = sentences(num_examples, seed)
    replies = ["good good", "bad bad", "fine"]
    return Dataset.from_dict(
        {
            "messages": [
                [{"role": "user", "content": text}, {"role": "assistant", "content": replies[label]}]
                for text, label in zip(texts, labels, strict=True)
            ]
        }
    )
