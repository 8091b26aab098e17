"""Loss weights: how an example's or a token's share of the training loss is changed, for the two methods that do.

- Pruning (`prune_fraction`, InfoBatch): each mastered example kept in a pruned epoch weighs 1 / (1 - r), so that
  the expected gradient of the epoch is the unpruned one's. On the fused head the weights scale each supervised
  row's loss and gradient; on a classifier's standard path, [`weighted_loss`] reweighs the Trainer's loss.
- Token selection (`token_selection_fraction`, Rho-1): each batch's loss keeps the share of its supervised tokens
  with the highest excess loss (the learner's token loss minus a reference model's), [`token_selector`].

The per-example statistics and the curriculum are never weighted.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .alignment import base_model
from .fused import fused_causal_lm_head


def weighted_loss(
    loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The Trainer's `loss` of a classifier's batch with each example's cross-entropy weighed by `weights`:
    `(loss / sum_i CE_i) * sum_i w_i CE_i`, the ratio (no gradient) carrying the Trainer's own normalisation
    (`num_items_in_batch`, the number of processes).

    Args:
        loss (`torch.Tensor`): the Trainer's scalar loss of the batch.
        logits (`torch.Tensor` of shape `(B, C)`), labels (`torch.Tensor` of shape `(B,)`): the batch's.
        weights (`torch.Tensor` of shape `(B,)`): each example's weight.

    Raises:
        `ValueError`: the logits are not one row per example (a sequence model: its weights need the fused head).
    """
    if logits.dim() != 2:
        raise ValueError(
            f"prune_fraction weighs each example's loss, which for logits of shape {tuple(logits.shape)} (a sequence "
            "model) needs the fused causal-LM head, and it is off for this model. Use a classifier, a causal LM that "
            "the fused head supports (fused_cross_entropy), or prune_fraction=0."
        )
    per_example = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")  # (B,)
    total = per_example.detach().sum()
    if total == 0:
        return loss
    return (loss.detach() / total) * (weights.to(per_example.dtype) * per_example).sum()


def token_selector(
    reference_model: torch.nn.Module, inputs: Mapping[str, Any], fraction: float, chunk_size: int
) -> Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]:
    """Rho-1's row weights for one batch, for the fused head's `row_selector`.

    The reference model runs on `inputs` (with the labels) without gradient, through its own fused head, to get each
    supervised token's loss. The returned function, given the learner's token losses, weighs the top `fraction` by
    excess loss (learner minus reference) 1 / `fraction` and the rest 0, so that the loss, over the batch's count of
    supervised tokens, is the mean over the selected ones.
    """
    reference_losses = {}

    def record(example_of_row, position_of_row, losses):
        reference_losses["rows"] = losses
        return torch.ones_like(losses)

    with torch.no_grad(), fused_causal_lm_head(base_model(reference_model), chunk_size) as capture:
        capture.row_selector = record
        reference_model(**inputs)

    def select(example_of_row, position_of_row, learner_losses):
        excess = learner_losses - reference_losses["rows"].to(learner_losses.device)  # (n,)
        keep = max(1, math.ceil(fraction * excess.numel())) if excess.numel() else 0
        weights = torch.zeros_like(excess)
        weights[torch.topk(excess, keep).indices] = 1.0 / fraction
        return weights

    return select
