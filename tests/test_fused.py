"""The fused causal-LM head against the standard path: same loss, same gradients, same statistics, no full logits.

The models are tiny and built from configs (vocabulary 1000, 2 layers, hidden 32, fp32 on CPU, no dropout), so
the standard path's loss and gradients are exact references.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from builders import tiny_bert_classifier, tiny_gpt2, tiny_llama, tiny_t5
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
    SmolLM3Config,
    SmolLM3ForCausalLM,
)
from transformers.loss.loss_utils import ForCausalLMLoss

from hf_zpd.fused import (
    FUSED_SUPPORTED_CLASSES,
    FusedLinearCrossEntropy,
    check_fused_support,
    fused_causal_lm_head,
    fused_linear_cross_entropy,
    row_losses,
)
from hf_zpd.statistics import align_causal_labels, per_example_statistics

VOCAB = 1000
SEQ = 12

_DECODER = dict(
    vocab_size=VOCAB,
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


def _seeded(build):
    def seeded():
        torch.manual_seed(0)
        return build()

    return seeded


BUILDERS = {
    "gpt2-tied": lambda: tiny_gpt2(VOCAB, dropout=0.0),
    "llama-untied": lambda: tiny_llama(VOCAB),
    "llama-tied": _seeded(lambda: LlamaForCausalLM(LlamaConfig(**_DECODER, tie_word_embeddings=True))),
    "mistral": _seeded(lambda: MistralForCausalLM(MistralConfig(**_DECODER, head_dim=16))),
    "qwen2": _seeded(lambda: Qwen2ForCausalLM(Qwen2Config(**_DECODER))),
    "qwen3": _seeded(lambda: Qwen3ForCausalLM(Qwen3Config(**_DECODER, head_dim=16))),
    "smollm3-tied": _seeded(lambda: SmolLM3ForCausalLM(SmolLM3Config(**_DECODER))),
}


def test_every_allowlisted_class_is_tested():
    tested = {type(build()).__name__ for build in BUILDERS.values()}
    assert tested == FUSED_SUPPORTED_CLASSES


def _batch() -> dict[str, torch.Tensor]:
    """Right-padded batch with the -100 patterns of SFT: a full row, a masked prompt, nothing, one token."""
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(6, VOCAB, (5, SEQ), generator=generator)
    attention_mask = torch.ones_like(ids)
    labels = ids.clone()
    labels[1, :4] = -100  # a masked prompt
    labels[1, 9:], attention_mask[1, 9:], ids[1, 9:] = -100, 0, 0  # right padding
    labels[2] = -100  # nothing supervised
    labels[3] = -100
    labels[3, 6] = ids[3, 6]  # a single supervised token
    labels[4] = -100
    labels[4, 0] = ids[4, 0]  # only the first position: nothing left after the causal shift
    return {"input_ids": ids, "attention_mask": attention_mask, "labels": labels}


def _step(model, inputs, num_items_in_batch):
    model.zero_grad(set_to_none=True)
    kwargs = {} if num_items_in_batch is None else {"num_items_in_batch": num_items_in_batch}
    outputs = model(**inputs, **kwargs)
    # Scaled, as the Trainer's loss is under gradient accumulation: the backward must use grad_output.
    (outputs.loss * 0.75).backward()
    grads = {name: parameter.grad.clone() for name, parameter in model.named_parameters()}
    return outputs, grads


def _assert_statistics_equal(actual, expected):
    torch.testing.assert_close(actual.num_tokens, expected.num_tokens, rtol=0, atol=0)
    for field in ("loss_sum", "confidence_sum", "entropy_sum"):
        torch.testing.assert_close(getattr(actual, field), getattr(expected, field), rtol=1e-5, atol=1e-6)
    assert actual.vocab_size == expected.vocab_size


@pytest.mark.parametrize("num_items", [None, "tensor"])
@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
@pytest.mark.parametrize("kind", ["gpt2-tied", "llama-untied", "llama-tied"])
def test_fused_matches_standard(kind, chunk_size, num_items):
    model = BUILDERS[kind]()
    model.train()
    inputs = _batch()
    # As the Trainer counts it: supervised labels after the shift, here across a larger global batch.
    num_items_in_batch = None if num_items is None else (inputs["labels"][:, 1:] != -100).sum() + 5

    standard, standard_grads = _step(model, inputs, num_items_in_batch)
    expected = per_example_statistics(*align_causal_labels(standard.logits.detach(), inputs["labels"]))

    with fused_causal_lm_head(model, chunk_size=chunk_size) as capture:
        fused, fused_grads = _step(model, inputs, num_items_in_batch)
    assert fused.logits.shape == (5, SEQ, model.config.hidden_size)  # hidden states, not vocabulary scores

    torch.testing.assert_close(fused.loss, standard.loss, rtol=1e-5, atol=1e-5)
    assert fused_grads.keys() == standard_grads.keys()
    for name in standard_grads:
        torch.testing.assert_close(fused_grads[name], standard_grads[name], rtol=1e-5, atol=1e-6, msg=name)
    _assert_statistics_equal(capture.statistics, expected)
    assert capture.statistics.num_tokens.tolist() == [11, 5, 0, 1, 0]


@pytest.mark.parametrize("kind", ["mistral", "qwen2", "qwen3", "smollm3-tied"])
def test_fused_matches_standard_other_allowlisted_models(kind):
    model = BUILDERS[kind]()
    inputs = _batch()
    for num_items_in_batch in (None, 23):  # an int, as a custom trainer may pass
        standard, standard_grads = _step(model, inputs, num_items_in_batch)
        expected = per_example_statistics(*align_causal_labels(standard.logits.detach(), inputs["labels"]))
        with fused_causal_lm_head(model, chunk_size=7) as capture:
            fused, fused_grads = _step(model, inputs, num_items_in_batch)
        torch.testing.assert_close(fused.loss, standard.loss, rtol=1e-5, atol=1e-5)
        for name in standard_grads:
            torch.testing.assert_close(fused_grads[name], standard_grads[name], rtol=1e-5, atol=1e-6, msg=name)
        _assert_statistics_equal(capture.statistics, expected)


def test_bf16_autocast_mirrors_the_standard_rounding():
    # lm_head in bf16, loss in fp32, as the standard path under autocast: same loss and statistics; gradients within
    # bf16 rounding (the standard path rounds one GEMM's output, the fused one each chunk's before summing in fp32).
    model = BUILDERS["llama-untied"]()
    inputs = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        standard, standard_grads = _step(model, inputs, torch.tensor(20))
        with fused_causal_lm_head(model, chunk_size=7) as capture:
            fused, fused_grads = _step(model, inputs, torch.tensor(20))
    assert fused.loss.dtype == standard.loss.dtype == torch.float32
    torch.testing.assert_close(fused.loss, standard.loss, rtol=1e-5, atol=1e-5)
    # Outside autocast, as the trainer reads them (the bf16 logits upcast chunk by chunk).
    expected = per_example_statistics(*align_causal_labels(standard.logits.detach(), inputs["labels"]))
    _assert_statistics_equal(capture.statistics, expected)
    for name in standard_grads:
        scale = standard_grads[name].abs().max().item()
        torch.testing.assert_close(fused_grads[name], standard_grads[name], rtol=0, atol=2e-2 * scale, msg=name)


def test_shift_labels_and_all_ignored_batch():
    model = BUILDERS["llama-untied"]()
    inputs = _batch()
    labels = inputs.pop("labels")
    shift_labels = F.pad(labels, (0, 1), value=-100)[:, 1:].contiguous()
    # shift_labels given explicitly (as context parallelism does): same loss as ForCausalLMLoss with it.
    standard = model(**inputs, labels=labels, shift_labels=shift_labels)
    with fused_causal_lm_head(model) as capture:
        fused = model(**inputs, labels=labels, shift_labels=shift_labels)
    torch.testing.assert_close(fused.loss, standard.loss, rtol=1e-5, atol=1e-5)
    assert capture.statistics.num_tokens.tolist() == [11, 5, 0, 1, 0]

    # Nothing supervised: the mean is NaN and the gradients are zero, as with F.cross_entropy.
    ignored = torch.full_like(labels, -100)
    standard, standard_grads = _step(model, {**inputs, "labels": ignored}, None)
    with fused_causal_lm_head(model):
        fused, fused_grads = _step(model, {**inputs, "labels": ignored}, None)
    assert fused.loss.isnan() and standard.loss.isnan()
    for name in standard_grads:
        torch.testing.assert_close(fused_grads[name], standard_grads[name], msg=name)


def test_no_grad_gives_statistics_without_logits():
    model = BUILDERS["gpt2-tied"]()
    inputs = _batch()
    with torch.no_grad():
        standard = model(**inputs)
        with fused_causal_lm_head(model, chunk_size=5) as capture:
            fused = model(**inputs)
    assert not fused.loss.requires_grad
    torch.testing.assert_close(fused.loss, standard.loss, rtol=1e-5, atol=1e-5)
    expected = per_example_statistics(*align_causal_labels(standard.logits, inputs["labels"]))
    _assert_statistics_equal(capture.statistics, expected)


def _naive(rows, weight, bias, targets, example_of_row, num_examples, normaliser):
    logits = F.linear(rows, weight, bias)  # (n, V)
    loss = F.cross_entropy(logits, targets, reduction="sum") / normaliser
    per_row = per_example_statistics(logits.detach(), targets)  # one position per row
    sums = [
        torch.zeros(num_examples, dtype=torch.float64).index_add_(0, example_of_row, getattr(per_row, field))
        for field in ("loss_sum", "confidence_sum", "entropy_sum")
    ]
    return loss, sums


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
@pytest.mark.parametrize("with_bias", [True, False])
def test_function_against_naive_reference(chunk_size, with_bias):
    generator = torch.Generator().manual_seed(0)
    num_rows, hidden, vocab, num_examples = 10, 6, 50, 4
    rows = torch.randn(num_rows, hidden, generator=generator)
    weight = torch.randn(vocab, hidden, generator=generator)
    bias = torch.randn(vocab, generator=generator) if with_bias else None
    targets = torch.randint(0, vocab, (num_rows,), generator=generator)
    example_of_row = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 3, 3])  # example 2 has no row
    normaliser = torch.tensor(13)

    leaves = [tensor.clone().requires_grad_() for tensor in (rows, weight) + ((bias,) if with_bias else ())]
    loss, statistics = fused_linear_cross_entropy(
        leaves[0], leaves[1], leaves[2] if with_bias else None, targets, example_of_row, num_examples, normaliser,
        chunk_size,
    )  # fmt: skip
    (loss * 2.5).backward()

    reference = [tensor.detach().clone().requires_grad_() for tensor in leaves]
    expected_loss, expected_sums = _naive(
        reference[0], reference[1], reference[2] if with_bias else None, targets, example_of_row, num_examples,
        normaliser,
    )  # fmt: skip
    (expected_loss * 2.5).backward()

    torch.testing.assert_close(loss, expected_loss, rtol=1e-6, atol=1e-6)
    for leaf, expected in zip(leaves, reference, strict=True):
        torch.testing.assert_close(leaf.grad, expected.grad, rtol=1e-5, atol=1e-6)
    for actual, expected in zip(
        (statistics.loss_sum, statistics.confidence_sum, statistics.entropy_sum), expected_sums, strict=True
    ):
        torch.testing.assert_close(actual, expected, rtol=1e-6, atol=1e-6)
    assert statistics.num_tokens.tolist() == [3, 5, 0, 2]


@pytest.mark.parametrize("chunk_size", [1, 3, 100])
@pytest.mark.parametrize("with_bias", [True, False])
def test_row_weights_against_naive_reference(chunk_size, with_bias):
    """Weighted rows (pruning, token selection): loss sum_r w_r CE_r / N and its gradients; statistics unweighted."""
    generator = torch.Generator().manual_seed(1)
    num_rows, hidden, vocab, num_examples = 10, 6, 50, 4
    rows = torch.randn(num_rows, hidden, generator=generator)
    weight = torch.randn(vocab, hidden, generator=generator)
    bias = torch.randn(vocab, generator=generator) if with_bias else None
    targets = torch.randint(0, vocab, (num_rows,), generator=generator)
    example_of_row = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1, 3, 3])
    row_weights = torch.tensor([1.0, 2.0, 0.0, 0.5, 1.0, 1.0, 3.0, 0.0, 1.5, 1.0])
    leaves = [tensor.clone().requires_grad_() for tensor in (rows, weight) + ((bias,) if with_bias else ())]
    loss, statistics = fused_linear_cross_entropy(
        leaves[0], leaves[1], leaves[2] if with_bias else None, targets, example_of_row, num_examples, 13,
        chunk_size, row_weights,
    )  # fmt: skip
    loss.backward()
    reference = [tensor.detach().clone().requires_grad_() for tensor in leaves]
    logits = F.linear(reference[0], reference[1], reference[2] if with_bias else None)
    expected = (F.cross_entropy(logits, targets, reduction="none") * row_weights).sum() / 13
    expected.backward()
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=1e-6)
    for leaf, naive in zip(leaves, reference, strict=True):
        torch.testing.assert_close(leaf.grad, naive.grad, rtol=1e-5, atol=1e-6)
    _, unweighted = _naive(rows, weight, bias, targets, example_of_row, num_examples, 13)
    torch.testing.assert_close(statistics.loss_sum, unweighted[0], rtol=1e-6, atol=1e-6)


def test_row_losses_are_each_rows_cross_entropy():
    generator = torch.Generator().manual_seed(2)
    rows, weight = torch.randn(9, 5, generator=generator), torch.randn(30, 5, generator=generator)
    targets = torch.randint(0, 30, (9,), generator=generator)
    expected = F.cross_entropy(rows @ weight.T, targets, reduction="none")
    for chunk_size in (1, 4, 50):
        torch.testing.assert_close(row_losses(rows, weight, None, targets, chunk_size), expected)


def test_function_gradcheck_float64():
    generator = torch.Generator().manual_seed(1)
    rows = torch.randn(5, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    weight = torch.randn(4, 3, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(4, dtype=torch.float64, generator=generator, requires_grad=True)
    targets = torch.tensor([0, 3, 1, 1, 2])
    example_of_row = torch.tensor([0, 0, 1, 2, 2])

    def loss(rows, weight, bias):
        return FusedLinearCrossEntropy.apply(rows, weight, bias, targets, example_of_row, 3, 3.0, 2)[0]

    assert torch.autograd.gradcheck(loss, (rows, weight, bias))


def test_restored_when_the_forward_raises():
    model = BUILDERS["llama-untied"]()
    head, state = model.lm_head, dict(model.__dict__)
    assert "_loss_function" not in model.__dict__
    inputs = _batch()
    inputs["labels"][0, 3] = VOCAB + 7  # out of range: the fused loss raises inside the forward
    with pytest.raises((IndexError, RuntimeError)):
        with fused_causal_lm_head(model):
            model(**inputs)
    assert model.lm_head is head and model.get_output_embeddings() is head
    assert "_loss_function" not in model.__dict__ and model.__dict__.keys() == state.keys()
    assert model.loss_function is ForCausalLMLoss

    # A loss function set on the instance beforehand is put back as it was.
    model.loss_function = ForCausalLMLoss
    with pytest.raises(KeyError):
        with fused_causal_lm_head(model):
            raise KeyError("raised in the body")
    assert model.__dict__["_loss_function"] is ForCausalLMLoss and model.lm_head is head


def test_state_dict_and_parameters_unchanged():
    for kind in ("gpt2-tied", "llama-untied"):
        model = BUILDERS[kind]()
        before = model.state_dict()
        parameters = dict(model.named_parameters())
        with fused_causal_lm_head(model):
            inside = model.state_dict()
            assert list(inside) == list(before)
            assert all(inside[name].data_ptr() == before[name].data_ptr() for name in before)
            assert dict(model.named_parameters()) == parameters
        after = model.state_dict()
        assert list(after) == list(before)
        assert all(after[name].data_ptr() == before[name].data_ptr() for name in before)
    assert model.lm_head.weight is not model.model.embed_tokens.weight  # untied stays untied


def test_runtime_check_that_lm_head_output_reaches_the_loss():
    model = BUILDERS["gpt2-tied"]()
    inputs = _batch()
    with fused_causal_lm_head(model) as capture:
        hidden = model.lm_head(torch.randn(5, SEQ, 32))
        with pytest.raises(RuntimeError, match="changed the output of lm_head"):
            capture.loss_function(hidden * 2.0, inputs["labels"], vocab_size=VOCAB)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: tiny_bert_classifier(VOCAB), "BertForSequenceClassification: it is a classifier"),
        (lambda: tiny_t5(VOCAB), "T5ForConditionalGeneration: it is an encoder-decoder"),
        (lambda: tiny_llama(VOCAB).model, "LlamaModel: its forward has not been checked"),
    ],
)
def test_refuses_unsupported_models(build, match):
    model = build()
    with pytest.raises(ValueError, match=match) as raised:
        check_fused_support(model)
    assert "Leave the fused head off" in str(raised.value)
    with pytest.raises(ValueError, match=match):
        with fused_causal_lm_head(model):
            pass


def test_refuses_logit_transforms_custom_losses_and_nesting():
    model = BUILDERS["llama-untied"]()
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(ValueError, match="final_logit_softcapping=30.0"):
        check_fused_support(model)
    model.config.final_logit_softcapping = None
    model.config.logit_scale = 0.5
    with pytest.raises(ValueError, match="logit_scale=0.5"):
        check_fused_support(model)
    del model.config.logit_scale

    model.loss_function = lambda *args, **kwargs: None
    with pytest.raises(ValueError, match="custom loss function"):
        check_fused_support(model)
    del model._loss_function

    with fused_causal_lm_head(model):
        with pytest.raises(ValueError, match="already active"):
            check_fused_support(model)
    check_fused_support(model)

    class MyLlama(LlamaForCausalLM):
        pass

    MyLlama.__name__ = "LlamaForCausalLM"
    with pytest.raises(ValueError, match="a subclass may change its forward"):
        check_fused_support(MyLlama(model.config))
