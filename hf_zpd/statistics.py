"""Per-example statistics of a model's predictions: loss, confidence, entropy and competence.

This module is pure PyTorch (no `transformers` import), so it can be tested against a naive reference without a
model. The formulas are the method's (README, "How it works"); for an example i with supervised positions T_i (labels != -100) and an
output distribution of size V:

    loss        l_i = mean_{t in T_i} -log p_t(y_t)
    confidence  c_i = mean_{t in T_i} max_v p_t(v)
    entropy     h_i = mean_{t in T_i} H(p_t) / log V
    competence  k_i = wL (1 - min(l_i / log V, 1)) + wC c_i + wH (1 - h_i)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100

# Classifiers with at most this many classes also keep each example's class probabilities (the label audit's input,
# `label_errors.py`): a few floats per example. Beyond it (and for language models) only the statistics are kept.
MAX_RECORDED_CLASSES = 128

# The default competence weights (wL, wC, wH) of the method, and those of the loss-only ablation "A1".
COMPOSITE_WEIGHTS = (0.4, 0.35, 0.25)
LOSS_ONLY_WEIGHTS = (1.0, 0.0, 0.0)


@dataclass
class ExampleStatistics:
    """Per-example sums over supervised positions, so that means and token-level totals can both be derived.

    Sums (not means) are kept because the dataset perplexity and the running perplexity are token-weighted, and
    because sums from several micro-batches or processes add up exactly.

    Args:
        loss_sum (`torch.Tensor` of shape `(num_examples,)`):
            Sum over the example's supervised positions of `-log p_t(y_t)`.
        confidence_sum (`torch.Tensor` of shape `(num_examples,)`):
            Sum of `max_v p_t(v)`.
        entropy_sum (`torch.Tensor` of shape `(num_examples,)`):
            Sum of `H(p_t) / log V`.
        num_tokens (`torch.Tensor` of shape `(num_examples,)`):
            Number of supervised positions. An example with none has all its means undefined (NaN).
        vocab_size (`int`):
            V, the size of the output distribution (vocabulary or number of classes).
        probabilities (`torch.Tensor` of shape `(num_examples, V)`, *optional*):
            The class probabilities of a classifier with one position per example and at most
            `MAX_RECORDED_CLASSES` classes; `None` otherwise.
    """

    loss_sum: torch.Tensor
    confidence_sum: torch.Tensor
    entropy_sum: torch.Tensor
    num_tokens: torch.Tensor
    vocab_size: int
    probabilities: torch.Tensor | None = None

    def _mean(self, total: torch.Tensor) -> torch.Tensor:
        # 0 / 0 gives NaN on purpose: an example without supervised positions has no statistics.
        return total / self.num_tokens

    @classmethod
    def zeros(cls, num_examples: int, vocab_size: int, device: torch.device | str | None = None) -> ExampleStatistics:
        """Zero sums for `num_examples` examples, in float64, to accumulate rows into with [`add_rows`]."""
        zeros = torch.zeros(num_examples, dtype=torch.float64, device=device)
        return cls(zeros, zeros.clone(), zeros.clone(), zeros.clone(), vocab_size)

    def add_rows(self, owners: torch.Tensor, token: TokenStatistics) -> None:
        """Adds the per-row statistics of a chunk to the sums of the examples that own the rows."""
        self.loss_sum.index_add_(0, owners, token.loss.double())
        self.confidence_sum.index_add_(0, owners, token.confidence.double())
        self.entropy_sum.index_add_(0, owners, token.entropy.double())

    @property
    def loss(self) -> torch.Tensor:
        return self._mean(self.loss_sum)

    @property
    def confidence(self) -> torch.Tensor:
        return self._mean(self.confidence_sum)

    @property
    def entropy(self) -> torch.Tensor:
        return self._mean(self.entropy_sum)


def align_causal_labels(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Shift logits and labels by one position, as causal LMs do: position t predicts token t + 1.

    Args:
        logits (`torch.Tensor` of shape `(B, T, V)`): the model's output.
        labels (`torch.Tensor` of shape `(B, T)`): the unshifted labels, `-100` where unsupervised.

    Returns:
        `tuple[torch.Tensor, torch.Tensor]`: views of shape `(B, T - 1, V)` and `(B, T - 1)`.
    """
    return logits[:, :-1, :], labels[:, 1:]


@torch.no_grad()
def per_example_statistics(
    logits: torch.Tensor,
    labels: torch.Tensor,
    chunk_size: int = 128,
) -> ExampleStatistics:
    """Computes each example's loss, confidence and entropy sums in bounded memory.

    Only the supervised rows (labels != -100) are read, `chunk_size` of them at a time and cast to fp32 within the
    chunk, so at most one `(chunk_size, V)` fp32 tensor (plus its softmax) is alive: never a second full
    `(B, T, V)` fp32 tensor.

    Args:
        logits (`torch.Tensor` of shape `(B, V)` or `(B, T, V)`):
            Unnormalised scores, in any floating dtype. Already aligned with `labels` (see
            [`align_causal_labels`] for causal LMs).
        labels (`torch.Tensor` of shape `(B,)` or `(B, T)`):
            Target indices, `-100` where a position is not supervised.
        chunk_size (`int`, *optional*, defaults to 128):
            How many supervised positions are projected to fp32 at once.

    Returns:
        [`ExampleStatistics`]: per-example sums in float64, on the logits' device.

    Example:

    ```python
    >>> import torch
    >>> logits = torch.log(torch.tensor([[0.9, 0.1], [0.4, 0.6], [0.1, 0.9]]))
    >>> stats = per_example_statistics(logits, torch.tensor([0, 0, 0]))
    >>> [round(x, 3) for x in stats.loss.tolist()]
    [0.105, 0.916, 2.303]

    ```
    """
    if logits.dim() == labels.dim():
        raise ValueError(
            f"logits must have one more dimension than labels, got logits {tuple(logits.shape)} and labels "
            f"{tuple(labels.shape)}."
        )
    probabilities = None
    if logits.dim() == 2:  # sequence classification: one position per example
        if 2 <= logits.shape[-1] <= MAX_RECORDED_CLASSES:
            probabilities = torch.softmax(logits.float(), dim=-1).double()  # (B, K): the label audit's input
        logits, labels = logits[:, None, :], labels[:, None]
    batch_size, seq_len, vocab_size = logits.shape
    if labels.shape != (batch_size, seq_len):
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}.")
    if vocab_size < 2:
        raise ValueError(
            f"The model outputs {vocab_size} score per position; the statistics need a distribution over at least "
            "2 classes (regression heads with num_labels=1 cannot be scored)."
        )
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")

    log_vocab = math.log(vocab_size)
    supervised = (labels != IGNORE_INDEX).nonzero()  # (N, 2): example, position
    example_of_row, position_of_row = supervised[:, 0], supervised[:, 1]
    targets = labels[example_of_row, position_of_row]
    rows, row_index = _row_view(logits, example_of_row, position_of_row)

    stats = ExampleStatistics.zeros(batch_size, vocab_size, logits.device)
    for start in range(0, example_of_row.numel(), chunk_size):
        # (n, V): a fresh fp32 copy of n rows; the only vocabulary-sized fp32 tensors are this one and its exp.
        chunk = rows.index_select(0, row_index[start : start + chunk_size]).float()
        token = chunk_statistics(chunk, targets[start : start + chunk_size], log_vocab)
        stats.add_rows(example_of_row[start : start + chunk_size], token)
    stats.num_tokens = torch.bincount(example_of_row, minlength=batch_size).to(torch.float64)
    if probabilities is not None:
        probabilities[stats.num_tokens == 0] = math.nan  # an example without a label has no class probabilities
    stats.probabilities = probabilities
    return stats


@dataclass
class TokenStatistics:
    """What [`chunk_statistics`] computes for each row of a chunk.

    Args:
        loss, confidence, entropy (`torch.Tensor` of shape `(c,)`): -log p(y), max_v p_v and H(p) / log V.
        exponentials (`torch.Tensor` of shape `(c, V)`): exp(x - max x), for a gradient (softmax = exponentials / s).
        normalisers (`torch.Tensor` of shape `(c,)`): s = sum_v exp(x_v - max x).
    """

    loss: torch.Tensor
    confidence: torch.Tensor
    entropy: torch.Tensor
    exponentials: torch.Tensor
    normalisers: torch.Tensor


def chunk_statistics(chunk: torch.Tensor, targets: torch.Tensor, log_vocab: float) -> TokenStatistics:
    """The one statistics kernel, shared by the standard path and the fused head: per-row loss, confidence and
    normalised entropy of a chunk of logits, in five passes and no softmax or product tensor.

    With x' = x - max(x) and s = sum_v exp(x'_v):  -log p(y) = log s - x'_y,  max_v p_v = 1 / s,
    H(p) = log s - sum_v exp(x'_v) x'_v / s.

    Args:
        chunk (`torch.Tensor` of shape `(c, V)`): a float copy of `c` rows of logits that the caller owns; it is
            shifted in place (to x').
        targets (`torch.Tensor` of shape `(c,)`): the target of each row.
        log_vocab (`float`): log V, which normalises the entropy.
    """
    chunk -= chunk.max(dim=-1, keepdim=True).values
    target_shifted = chunk.gather(1, targets.unsqueeze(1)).squeeze(1)
    # A -inf logit (a masked token) would give 0 * -inf = NaN below; its probability is 0 either way. The target's
    # logit was read before, so an impossible target still gives an infinite loss.
    chunk.clamp_(min=torch.finfo(chunk.dtype).min)
    exponentials = chunk.exp()
    normalisers = exponentials.sum(dim=-1)
    weighted = torch.linalg.vecdot(exponentials, chunk)  # sum_v exp(x'_v) x'_v, without a product tensor
    log_normalisers = normalisers.log()
    return TokenStatistics(
        loss=log_normalisers - target_shifted,
        confidence=normalisers.reciprocal(),
        entropy=(log_normalisers - weighted / normalisers) / log_vocab,
        exponentials=exponentials,
        normalisers=normalisers,
    )


def _row_view(
    logits: torch.Tensor, example_of_row: torch.Tensor, position_of_row: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """A 2-D `(rows, V)` view of `logits` and each supervised row's index in it, without copying.

    The causal alignment is a strided view, and reshaping it would copy the whole `(B, T - 1, V)` tensor. Selecting
    rows of a strided 2-D view with `index_select` copies only the chosen rows, and is several times faster on CPU
    than advanced indexing by (example, position).
    """
    batch_size, seq_len, vocab_size = logits.shape
    example_stride, position_stride, vocab_stride = logits.stride()
    if vocab_stride == 1 and position_stride >= vocab_size and example_stride % position_stride == 0:
        rows_per_example = example_stride // position_stride
        num_rows = (batch_size - 1) * rows_per_example + seq_len  # stays inside the storage the view covers
        rows = logits.as_strided((num_rows, vocab_size), (position_stride, 1))
        return rows, example_of_row * rows_per_example + position_of_row
    # Any other layout: gather the supervised rows once (a copy of those rows only, in the logits' dtype).
    return logits[example_of_row, position_of_row], torch.arange(example_of_row.numel(), device=logits.device)


def competence(
    loss: torch.Tensor,
    confidence: torch.Tensor,
    entropy: torch.Tensor,
    vocab_size: int,
    weights: tuple[float, float, float] = COMPOSITE_WEIGHTS,
):
    """k = wL (1 - min(l / log V, 1)) + wC c + wH (1 - h), in [0, 1].

    Works on torch tensors and numpy arrays alike. NaN inputs give a NaN competence.

    Args:
        loss, confidence, entropy (`torch.Tensor` or `np.ndarray`): per-example means.
        vocab_size (`int`): V.
        weights (`tuple[float, float, float]`, *optional*, defaults to `(0.4, 0.35, 0.25)`): (wL, wC, wH).
    """
    w_loss, w_confidence, w_entropy = weights
    normalised_loss = (loss / math.log(vocab_size)).clip(max=1.0)
    return w_loss * (1 - normalised_loss) + w_confidence * confidence + w_entropy * (1 - entropy)
