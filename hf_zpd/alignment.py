"""How a model's logits line up with its labels, decided once per model from the model itself.

A causal LM's logits at position t predict the label at t + 1 ("shifted"); a classifier's, a token classifier's and
an encoder-decoder's predict the label at their own position ("aligned"). Checked against transformers 5.24 and
peft 0.21, the rule is, in order:

1. 2-D logits (one position per example, sequence classification): aligned.
2. The unwrapped base model (peft's `get_base_model()`, never the wrapper, whose class name is
   `PeftModelForCausalLM`): an encoder-decoder config is aligned; a class in transformers' causal-LM mapping is
   shifted; a class in its token-classification or masked-LM mapping is aligned.
3. Any other model (a custom class, `trust_remote_code`): the model's own loss on a probe batch decides. The mean
   cross-entropy of its logits is computed both ways and compared with the loss the model returned; the one that
   matches it wins.
4. If the probe cannot tell (the model returned no loss, or both readings match it, as for an untrained model whose
   every prediction is uniform): a model that can generate text (`can_generate()`) is shifted; otherwise a clear error
   asks for `label_alignment`.

`ZPDConfig.label_alignment` ("shifted" or "aligned") overrides the rule.
"""

from __future__ import annotations

import math

import torch
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
)

from .statistics import IGNORE_INDEX

SHIFTED, ALIGNED = "shifted", "aligned"
LABEL_ALIGNMENTS = ("auto", SHIFTED, ALIGNED)

_CAUSAL_LM_CLASS_NAMES = frozenset(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
_ALIGNED_CLASS_NAMES = frozenset(
    [*MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES.values(), *MODEL_FOR_MASKED_LM_MAPPING_NAMES.values()]
)
# The probe's loss must match one reading within this relative tolerance, and the other reading must be at least
# this many times farther away. A model's own loss and the cross-entropy recomputed here come from the same logits
# (upcast to fp32 for the loss, fp64 here), so they agree to ~1e-6 even for bf16 logits; an untrained model whose
# readings differ by 1e-3 is still told apart.
_PROBE_TOLERANCE = 1e-4
_PROBE_MARGIN = 10.0


def base_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside wrappers: `torch.compile`'s `_orig_mod`, DDP's `module`, peft's base model."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if hasattr(model, "_orig_mod"):  # torch.compile
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel | torch.nn.DataParallel):
            model = model.module
        elif hasattr(model, "get_base_model") and callable(model.get_base_model):  # peft
            model = model.get_base_model()
    return model


def model_class_name(model: torch.nn.Module) -> str:
    return type(base_model(model)).__name__


def alignment_from_structure(model: torch.nn.Module) -> str | None:
    """Rule 2: the alignment the unwrapped model's config or class says, or `None` when they say nothing."""
    base = base_model(model)
    config = getattr(base, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        return ALIGNED
    name = type(base).__name__
    if name in _CAUSAL_LM_CLASS_NAMES:
        return SHIFTED
    if name in _ALIGNED_CLASS_NAMES:
        return ALIGNED
    return None


def summed_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, shifted: bool) -> tuple[float, int]:
    """The summed cross-entropy of `logits` (B, T, V) against `labels` (B, T), in float64, and the supervised count."""
    if shifted:
        logits, labels = logits[:, :-1], labels[:, 1:]
    mask = labels != IGNORE_INDEX
    if not mask.any():
        return math.nan, 0
    rows = logits[mask].detach().double()  # (n, V)
    return float(torch.nn.functional.cross_entropy(rows, labels[mask], reduction="sum")), int(mask.sum())


def mean_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, shifted: bool) -> float:
    """The token-mean cross-entropy of `logits` (B, T, V) against `labels` (B, T), in float64."""
    total, count = summed_cross_entropy(logits, labels, shifted)
    return total / count if count else math.nan


def alignment_from_probe(
    logits: torch.Tensor, labels: torch.Tensor, model_loss: float | None, num_items: float | None = None
) -> str | None:
    """Rule 3: the reading whose cross-entropy matches the model's own loss; `None` if the probe cannot tell.

    The model's loss is either a mean over the batch's supervised tokens, or (a model that takes the Trainer's
    `num_items_in_batch`) their sum divided by `num_items`: both are tried for each reading.
    """
    if model_loss is None or not math.isfinite(model_loss) or logits.dim() != 3 or labels.shape != logits.shape[:2]:
        return None
    errors = {}
    for reading in (SHIFTED, ALIGNED):
        total, count = summed_cross_entropy(logits, labels, reading == SHIFTED)
        candidates = [total / count if count else math.nan] + ([total / num_items] if num_items else [])
        errors[reading] = min(abs(candidate - model_loss) for candidate in candidates)
    tolerance = _PROBE_TOLERANCE * max(1.0, abs(model_loss))
    best = min(errors, key=errors.get)
    other = errors[ALIGNED if best == SHIFTED else SHIFTED]
    if not math.isfinite(errors[best]) or errors[best] > tolerance:
        return None
    if other <= max(_PROBE_MARGIN * errors[best], 1e-7 * max(1.0, abs(model_loss))):
        return None  # both readings match: a uniform model, or identical positions
    return best


def decide_alignment(
    model: torch.nn.Module,
    logits: torch.Tensor,
    labels: torch.Tensor,
    model_loss: float | None,
    override: str = "auto",
    num_items: float | None = None,
) -> str:
    """The alignment of `model`'s logits with its labels, by the rule of the module docstring.

    Args:
        model (`torch.nn.Module`): the model, wrapped or not.
        logits (`torch.Tensor`): the logits of a probe batch.
        labels (`torch.Tensor`): its labels.
        model_loss (`float`, *optional*): the loss the model returned for that batch.
        override (`str`, *optional*, defaults to `"auto"`): `"shifted"` or `"aligned"` to skip the rule.
        num_items (`float`, *optional*): the `num_items_in_batch` the model was given, if any (its loss may be a sum
            divided by it rather than a mean).

    Raises:
        `ValueError`: the rule cannot decide; the message names the model and the setting that decides.
    """
    if override in (SHIFTED, ALIGNED):
        return override
    if logits.dim() == 2:
        return ALIGNED
    structural = alignment_from_structure(model)
    if structural is not None:
        return structural
    probed = alignment_from_probe(logits, labels, model_loss, num_items)
    if probed is not None:
        return probed
    base = base_model(model)
    if hasattr(base, "can_generate") and base.can_generate():
        return SHIFTED
    raise ValueError(
        f"ZPDTrainer cannot tell whether {type(base).__name__}'s logits at position t predict the label at t + 1 (a "
        "causal LM) or at t: its class is not in transformers' model mappings, and its own loss on the first "
        f"training batch ({model_loss}) did not single out one reading. Set ZPDConfig.label_alignment to 'shifted' "
        "(causal LM) or 'aligned' (token classification, encoder-decoder)."
    )
