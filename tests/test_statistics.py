"""`per_example_statistics`, `align_causal_labels` and `competence` against a naive reference.

The reference loops over examples and positions and takes the softmax of each position in float64, so it shares no
code path (no chunking, no logsumexp trick, no index_add) with the implementation under test.
"""

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers.loss.loss_utils import ForCausalLMLoss

from hf_zpd.statistics import (
    COMPOSITE_WEIGHTS,
    IGNORE_INDEX,
    LOSS_ONLY_WEIGHTS,
    ExampleStatistics,
    align_causal_labels,
    competence,
    per_example_statistics,
)


@pytest.fixture(autouse=True, scope="module")
def _single_intra_op_thread():
    """These tensors are tiny: on a shared CPU, waking intra-op threads costs ~10x the work itself."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------------------------------------
# The naive reference
# ----------------------------------------------------------------------------------------------------------------------


def reference_statistics(logits: torch.Tensor, labels: torch.Tensor, shift: int = 0) -> dict[str, torch.Tensor]:
    """Per-example sums and counts by a plain loop; position t is scored against `labels[t + shift]`.

    `shift=1` is the causal-LM alignment (position t predicts token t + 1), written out here independently of
    `align_causal_labels`.
    """
    logits = logits.to(torch.float64)
    if logits.dim() == 2:  # sequence classification: one position per example
        logits, labels = logits[:, None, :], labels[:, None]
    batch_size, seq_len, vocab_size = logits.shape
    sums = {name: [0.0] * batch_size for name in ("loss_sum", "confidence_sum", "entropy_sum", "num_tokens")}
    for b in range(batch_size):
        for t in range(seq_len - shift):
            target = int(labels[b, t + shift])
            if target == IGNORE_INDEX:
                continue
            p = torch.softmax(logits[b, t], dim=0)  # (V,) float64
            nonzero = p[p > 0]
            entropy = -(nonzero * torch.log(nonzero)).sum().item()
            sums["loss_sum"][b] += -math.log(p[target].item())
            sums["confidence_sum"][b] += p.max().item()
            sums["entropy_sum"][b] += entropy / math.log(vocab_size)
            sums["num_tokens"][b] += 1
    return {name: torch.tensor(values, dtype=torch.float64) for name, values in sums.items()}


def reference_means(sums: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # 0 / 0 -> NaN for an example without supervised positions, as the package documents.
    return {name: sums[f"{name}_sum"] / sums["num_tokens"] for name in ("loss", "confidence", "entropy")}


def assert_matches_reference(stats: ExampleStatistics, sums: dict[str, torch.Tensor], rtol: float, atol: float):
    for name, expected in sums.items():
        torch.testing.assert_close(
            getattr(stats, name), expected, rtol=rtol, atol=atol, msg=lambda m, name=name: f"{name}: {m}"
        )
    for name, expected in reference_means(sums).items():
        torch.testing.assert_close(
            getattr(stats, name),
            expected,
            rtol=rtol,
            atol=atol,
            equal_nan=True,
            msg=lambda m, name=name: f"{name}: {m}",
        )


# ----------------------------------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------------------------------

# (logits shape, labels shape). The 2-D logits are sequence classification, one position per example.
SHAPES = {
    "B2_T5_V8": ((2, 5, 8), (2, 5)),
    "odd_B3_T7_V11": ((3, 7, 11), (3, 7)),
    "B1_T6_V5": ((1, 6, 5), (1, 6)),
    "B4_T1_V3": ((4, 1, 3), (4, 1)),
    "B4_T12_V40": ((4, 12, 40), (4, 12)),
    "cls_B5_V3": ((5, 3), (5,)),
    "cls_B1_V2": ((1, 2), (1,)),
}

MASKS = ["none", "right_padding", "left_padding", "random_holes", "one_example_all_ignored"]

# dtype -> (rtol, atol) against the reference computed on the original fp32 logits. Against the reference computed
# on the rounded low-precision values, every dtype must meet the fp32 tolerance: the function upcasts each chunk.
FP32_TOLERANCE = (1e-5, 1e-5)
DTYPES = {
    "float32": (torch.float32, FP32_TOLERANCE),
    "bfloat16": (torch.bfloat16, (5e-2, 5e-2)),
    "float16": (torch.float16, (5e-3, 5e-3)),
}


def supervised_mask(labels_shape: tuple[int, ...], pattern: str, generator: torch.Generator) -> torch.Tensor:
    """Bool mask of the supervised positions for a `-100` pattern."""
    batch_size = labels_shape[0]
    mask = torch.ones(labels_shape, dtype=torch.bool)
    if pattern == "none":
        return mask
    if pattern == "random_holes":
        mask = torch.rand(labels_shape, generator=generator) > 0.4
        mask.view(batch_size, -1)[0, 0] = True  # at least one supervised position somewhere
        return mask
    if pattern == "one_example_all_ignored":
        mask[batch_size // 2] = False
        return mask
    if len(labels_shape) == 1:  # classification has no padding side: drop the last example's label
        mask[-1] = False
        return mask
    seq_len = labels_shape[1]
    for b in range(batch_size):
        length = max(1, seq_len - b)  # a different length per example
        if pattern == "right_padding":
            mask[b, length:] = False
        else:  # left_padding
            mask[b, : seq_len - length] = False
    return mask


def make_inputs(shape_id: str, pattern: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    logits_shape, labels_shape = SHAPES[shape_id]
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(logits_shape, generator=generator) * 3  # peaked and flat rows alike
    labels = torch.randint(0, logits_shape[-1], labels_shape, generator=generator)
    labels[~supervised_mask(labels_shape, pattern, generator)] = IGNORE_INDEX
    return logits, labels


# ----------------------------------------------------------------------------------------------------------------------
# per_example_statistics against the reference
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", MASKS)
@pytest.mark.parametrize("dtype_id", list(DTYPES))
@pytest.mark.parametrize("shape_id", list(SHAPES))
def test_statistics_match_reference(shape_id, dtype_id, pattern):
    logits, labels = make_inputs(shape_id, pattern)
    dtype, (rtol, atol) = DTYPES[dtype_id]
    low_precision = logits.to(dtype)
    num_rows = labels.numel()
    expected_exact_input = reference_statistics(low_precision, labels)
    expected_fp32_input = reference_statistics(logits, labels)
    for chunk_size in (1, 3, 512, num_rows + 5):
        stats = per_example_statistics(low_precision, labels, chunk_size=chunk_size)
        assert stats.vocab_size == logits.shape[-1]
        assert stats.loss_sum.dtype == torch.float64
        assert stats.num_tokens.shape == (logits.shape[0],)
        assert_matches_reference(stats, expected_exact_input, *FP32_TOLERANCE)
        assert_matches_reference(stats, expected_fp32_input, rtol, atol)


@pytest.mark.parametrize("shape_id", list(SHAPES))
def test_example_without_supervised_positions_is_nan_and_isolated(shape_id):
    logits, labels = make_inputs(shape_id, "none", seed=1)
    empty = logits.shape[0] // 2
    labels[empty] = IGNORE_INDEX
    stats = per_example_statistics(logits, labels, chunk_size=2)

    assert stats.num_tokens[empty] == 0
    for name in ("loss", "confidence", "entropy"):
        assert torch.isnan(getattr(stats, name)[empty]), name
        assert getattr(stats, f"{name}_sum")[empty] == 0, name
    others = torch.arange(logits.shape[0]) != empty
    for name in ("loss", "confidence", "entropy"):
        assert torch.isfinite(getattr(stats, name)[others]).all(), name
    # The other rows are exactly what they are without the empty example in the batch.
    alone = per_example_statistics(logits[others], labels[others], chunk_size=2)
    for name in ("loss_sum", "confidence_sum", "entropy_sum", "num_tokens"):
        torch.testing.assert_close(getattr(stats, name)[others], getattr(alone, name), rtol=0, atol=0)


def test_example_statistics_means_are_sums_over_tokens():
    stats = ExampleStatistics(
        loss_sum=torch.tensor([3.0, 0.0, 1.5], dtype=torch.float64),
        confidence_sum=torch.tensor([1.5, 0.0, 0.25], dtype=torch.float64),
        entropy_sum=torch.tensor([0.6, 0.0, 0.5], dtype=torch.float64),
        num_tokens=torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64),
        vocab_size=5,
    )
    nan = math.nan
    expected = {"loss": [1.0, nan, 1.5], "confidence": [0.5, nan, 0.25], "entropy": [0.2, nan, 0.5]}
    for name, values in expected.items():
        torch.testing.assert_close(getattr(stats, name), torch.tensor(values, dtype=torch.float64), equal_nan=True)


def test_sums_of_split_batches_add_up():
    """Sums, not means, are kept so that micro-batches concatenate exactly."""
    logits, labels = make_inputs("B4_T12_V40", "random_holes", seed=8)
    whole = per_example_statistics(logits, labels, chunk_size=5)
    first, second = per_example_statistics(logits[:2], labels[:2]), per_example_statistics(logits[2:], labels[2:])
    for name in ("loss_sum", "confidence_sum", "entropy_sum", "num_tokens"):
        joined = torch.cat([getattr(first, name), getattr(second, name)])
        torch.testing.assert_close(joined, getattr(whole, name), rtol=0, atol=0)


def test_all_positions_ignored_gives_all_nan():
    logits = torch.randn(3, 4, 6)
    labels = torch.full((3, 4), IGNORE_INDEX)
    stats = per_example_statistics(logits, labels)
    torch.testing.assert_close(stats.num_tokens, torch.zeros(3, dtype=torch.float64))
    assert torch.isnan(stats.loss).all() and torch.isnan(stats.confidence).all() and torch.isnan(stats.entropy).all()


@pytest.mark.parametrize(
    ("probability", "expected_loss"), [(0.9, 0.105), (0.4, 0.916), (0.1, 2.303)], ids=["p0.9", "p0.4", "p0.1"]
)
@pytest.mark.parametrize("vocab_size", [2, 10], ids=["V2", "V10"])
def test_method_worked_values(probability, expected_loss, vocab_size):
    """The method's worked values: a true-token probability of 0.9 / 0.4 / 0.1 gives a loss of 0.105 / 0.916 / 2.303."""
    rest = (1 - probability) / (vocab_size - 1)
    probabilities = torch.tensor([[probability] + [rest] * (vocab_size - 1)], dtype=torch.float64)
    stats = per_example_statistics(torch.log(probabilities), torch.tensor([0]))
    assert round(stats.loss.item(), 3) == expected_loss
    assert round(math.exp(stats.loss.item()), 6) == round(1 / probability, 6)  # PPL_i = exp(l_i) = 1 / p


def test_uniform_distribution_gives_the_extremes():
    """Uniform logits: loss = log V, confidence = 1/V, normalised entropy = 1, hence competence 0.35 / V."""
    vocab_size = 7
    stats = per_example_statistics(torch.zeros(2, 3, vocab_size), torch.tensor([[0, 3, 6], [1, 2, IGNORE_INDEX]]))
    torch.testing.assert_close(stats.loss, torch.full((2,), math.log(vocab_size), dtype=torch.float64))
    torch.testing.assert_close(stats.confidence, torch.full((2,), 1 / vocab_size, dtype=torch.float64))
    torch.testing.assert_close(stats.entropy, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(stats.num_tokens, torch.tensor([3.0, 2.0], dtype=torch.float64))
    k = competence(stats.loss, stats.confidence, stats.entropy, vocab_size)
    torch.testing.assert_close(k, torch.full((2,), 0.35 / vocab_size, dtype=torch.float64))


def test_confident_correct_model_has_competence_one():
    logits = torch.full((2, 3, 5), -60.0)
    labels = torch.tensor([[0, 1, 2], [3, 4, 0]])
    logits.scatter_(2, labels.unsqueeze(2), 60.0)
    stats = per_example_statistics(logits, labels)
    k = competence(stats.loss, stats.confidence, stats.entropy, 5)
    torch.testing.assert_close(k, torch.ones(2, dtype=torch.float64))


def test_statistics_are_identical_for_every_chunk_size():
    """Chunking is exact: every chunk size gives the same bits (memory itself is benchmarked in benchmarks/)."""
    generator = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 33, 97, generator=generator) * 3
    labels = torch.randint(0, 97, (4, 33), generator=generator)
    labels[torch.rand(4, 33, generator=generator) < 0.3] = IGNORE_INDEX
    baseline = per_example_statistics(logits, labels, chunk_size=labels.numel() + 1)
    for chunk_size in (1, 2, 3, 7, 64, 512):
        stats = per_example_statistics(logits, labels, chunk_size=chunk_size)
        for name in ("loss_sum", "confidence_sum", "entropy_sum", "num_tokens"):
            torch.testing.assert_close(
                getattr(stats, name),
                getattr(baseline, name),
                rtol=0,
                atol=0,
                msg=lambda m, chunk_size=chunk_size: f"chunk_size={chunk_size}: {m}",
            )


class _RecordFloatingOutputs(TorchDispatchMode):
    """Records the shape of every floating-point tensor an aten op returns."""

    def __init__(self):
        super().__init__()
        self.outputs: list[tuple[str, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(tensor, torch.Tensor) and tensor.is_floating_point():
                self.outputs.append((str(func), tensor.dtype, tensor.numel()))
        return out


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_no_fp32_tensor_larger_than_one_chunk_is_created(dtype):
    """With low-precision logits, any fp32 or fp64 tensor of more than `chunk_size x V` elements would be a
    materialised up-cast of the whole batch. This inspects what each op returns; it is not a peak-memory
    measurement."""
    batch_size, seq_len, vocab_size, chunk_size = 4, 32, 64, 8
    logits = torch.randn(batch_size, seq_len, vocab_size).to(dtype)
    labels = torch.randint(0, vocab_size, (batch_size, seq_len))
    with _RecordFloatingOutputs() as recorder:
        per_example_statistics(logits, labels, chunk_size=chunk_size)
    upcast = [(op, numel) for op, dt, numel in recorder.outputs if dt in (torch.float32, torch.float64)]
    assert upcast, "the recorder saw no fp32 op: the check would be vacuous"
    too_large = [(op, numel) for op, numel in upcast if numel > chunk_size * vocab_size]
    assert not too_large, too_large


# ----------------------------------------------------------------------------------------------------------------------
# Causal alignment
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", MASKS)
@pytest.mark.parametrize("shape_id", ["B2_T5_V8", "odd_B3_T7_V11", "B1_T6_V5", "B4_T12_V40"])
def test_causal_alignment_matches_shifted_reference(shape_id, pattern):
    logits, labels = make_inputs(shape_id, pattern, seed=2)
    shifted_logits, shifted_labels = align_causal_labels(logits, labels)
    batch_size, seq_len, vocab_size = logits.shape
    assert shifted_logits.shape == (batch_size, seq_len - 1, vocab_size)
    assert shifted_labels.shape == (batch_size, seq_len - 1)

    stats = per_example_statistics(shifted_logits, shifted_labels, chunk_size=3)
    assert_matches_reference(stats, reference_statistics(logits, labels, shift=1), *FP32_TOLERANCE)


@pytest.mark.parametrize("pattern", ["none", "right_padding", "left_padding", "random_holes"])
def test_causal_token_mean_equals_transformers_causal_lm_loss(pattern):
    """The token-weighted mean of the per-example losses is the loss a causal LM's Trainer reports."""
    logits, labels = make_inputs("odd_B3_T7_V11", pattern, seed=4)
    stats = per_example_statistics(*align_causal_labels(logits, labels))
    token_mean = stats.loss_sum.sum() / stats.num_tokens.sum()
    expected = ForCausalLMLoss(logits, labels, vocab_size=logits.shape[-1])
    torch.testing.assert_close(token_mean.float(), expected, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# competence
# ----------------------------------------------------------------------------------------------------------------------


def reference_competence(loss, confidence, entropy, vocab_size, weights) -> list[float]:
    w_loss, w_confidence, w_entropy = weights
    result = []
    for l_i, c_i, h_i in zip(loss, confidence, entropy, strict=True):
        normalised_loss = min(float(l_i) / math.log(vocab_size), 1.0)
        result.append(w_loss * (1 - normalised_loss) + w_confidence * float(c_i) + w_entropy * (1 - float(h_i)))
    return result


@pytest.mark.parametrize("backend", ["torch", "numpy"])
@pytest.mark.parametrize("weights", [COMPOSITE_WEIGHTS, LOSS_ONLY_WEIGHTS], ids=["composite", "loss_only"])
@pytest.mark.parametrize("vocab_size", [2, 11, 50257], ids=["V2", "V11", "V50257"])
def test_competence_matches_formula(weights, backend, vocab_size):
    rng = np.random.default_rng(5)
    log_vocab = math.log(vocab_size)
    # Losses up to 2 log V, so that about half are clipped at lhat = 1.
    loss = np.concatenate([rng.uniform(0, 2 * log_vocab, 40), [0.0, log_vocab, 1.5 * log_vocab]])
    confidence = rng.uniform(1 / vocab_size, 1, loss.size)
    entropy = rng.uniform(0, 1, loss.size)
    expected = reference_competence(loss, confidence, entropy, vocab_size, weights)

    if backend == "torch":
        result = competence(torch.tensor(loss), torch.tensor(confidence), torch.tensor(entropy), vocab_size, weights)
        assert isinstance(result, torch.Tensor)
        torch.testing.assert_close(result, torch.tensor(expected, dtype=torch.float64))
    else:
        result = competence(loss, confidence, entropy, vocab_size, weights)
        assert isinstance(result, np.ndarray)
        torch.testing.assert_close(torch.from_numpy(result), torch.tensor(expected, dtype=torch.float64))
    assert (np.asarray(result) >= -1e-12).all() and (np.asarray(result) <= 1 + 1e-12).all()


def _converter(backend: str):
    if backend == "torch":
        return lambda values: torch.tensor(values, dtype=torch.float64)
    return lambda values: np.array(values, dtype=np.float64)


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_competence_clips_normalised_loss_at_one(backend):
    """A loss above log V counts as lhat = 1: any loss beyond it gives the same competence."""
    vocab_size = 10
    log_vocab = math.log(vocab_size)
    loss = [log_vocab, 2 * log_vocab, 100.0]
    confidence, entropy = [0.3, 0.3, 0.3], [0.6, 0.6, 0.6]
    convert = _converter(backend)
    k = competence(convert(loss), convert(confidence), convert(entropy), vocab_size)
    expected = 0.4 * 0 + 0.35 * 0.3 + 0.25 * (1 - 0.6)
    torch.testing.assert_close(torch.as_tensor(k), torch.full((3,), expected, dtype=torch.float64))
    loss_only = competence(convert(loss), convert(confidence), convert(entropy), vocab_size, LOSS_ONLY_WEIGHTS)
    torch.testing.assert_close(torch.as_tensor(loss_only), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["torch", "numpy"])
def test_competence_propagates_nan(backend):
    convert = _converter(backend)
    k = competence(convert([math.nan, 1.0]), convert([math.nan, 0.5]), convert([math.nan, 0.5]), 4)
    k = torch.as_tensor(k)
    assert torch.isnan(k[0]) and torch.isfinite(k[1])


def test_competence_of_statistics_matches_reference():
    logits, labels = make_inputs("odd_B3_T7_V11", "random_holes", seed=6)
    stats = per_example_statistics(logits, labels)
    means = reference_means(reference_statistics(logits, labels))
    k = competence(stats.loss, stats.confidence, stats.entropy, stats.vocab_size)
    expected = reference_competence(means["loss"], means["confidence"], means["entropy"], 11, COMPOSITE_WEIGHTS)
    torch.testing.assert_close(k, torch.tensor(expected, dtype=torch.float64), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape"),
    [((2, 5, 1), (2, 5)), ((3, 1), (3,))],
    ids=["causal_V1", "regression_head_num_labels_1"],
)
def test_single_output_head_is_rejected(logits_shape, labels_shape):
    with pytest.raises(ValueError, match="at least 2 classes"):
        per_example_statistics(torch.randn(logits_shape), torch.zeros(labels_shape, dtype=torch.long))


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape", "match"),
    [
        ((2, 5, 4), (2, 6), "do not match"),
        ((2, 5, 4), (3, 5), "do not match"),
        ((3, 4), (2,), "do not match"),
        ((2, 5, 4), (2, 5, 4), "one more dimension"),
        ((2, 5, 4), (10,), "do not match"),
        ((3, 4), (3, 4), "one more dimension"),
    ],
    ids=["longer_labels", "more_examples", "cls_batch", "same_rank", "flat_labels", "cls_same_rank"],
)
def test_mismatched_shapes_are_rejected(logits_shape, labels_shape, match):
    with pytest.raises(ValueError, match=match):
        per_example_statistics(torch.randn(logits_shape), torch.zeros(labels_shape, dtype=torch.long))


@pytest.mark.parametrize("chunk_size", [0, -1])
def test_chunk_size_below_one_is_rejected(chunk_size):
    with pytest.raises(ValueError, match="chunk_size"):
        per_example_statistics(torch.randn(2, 3, 4), torch.zeros(2, 3, dtype=torch.long), chunk_size=chunk_size)


def test_masked_vocabulary_entries_with_minus_infinity():
    """-inf logits (masked tokens) have probability 0: finite statistics, unless the target itself is masked."""
    logits = torch.tensor([[[0.5, -math.inf, 1.0, -2.0], [3.0, -math.inf, -math.inf, 0.0]]])
    labels = torch.tensor([[2, 1]])
    stats = per_example_statistics(logits, labels[:, :1].expand(1, 2).clone())
    probabilities = torch.softmax(logits[0].double(), dim=-1)
    assert math.isinf(stats.loss.item())  # position 1's target (token 2) is masked: an infinite loss
    finite = per_example_statistics(logits[:, :1], labels[:, :1])
    torch.testing.assert_close(finite.loss, -torch.log(probabilities[:1, 2]).to(torch.float64))
    entropy = -(probabilities[0, [0, 2, 3]] * probabilities[0, [0, 2, 3]].log()).sum() / math.log(4)
    torch.testing.assert_close(finite.entropy, entropy.reshape(1))
    torch.testing.assert_close(finite.confidence, probabilities[0].max().reshape(1))
