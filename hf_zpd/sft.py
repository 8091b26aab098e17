"""`ZPDSFTTrainer`: TRL's `SFTTrainer` with the ZPD curriculum, a one-line swap in a TRL script.

```diff
- from trl import SFTConfig, SFTTrainer
+ from hf_zpd import ZPDSFTConfig as SFTConfig, ZPDSFTTrainer as SFTTrainer
```

Needs `pip install "hf_zpd[trl]"` (trl 1.16, the version this was checked against). The loss is `SFTTrainer`'s own,
through its fused LM head, and its logged metrics (`entropy`, `mean_token_accuracy`, `num_tokens`) still appear.
TRL's fused head returns per-token log-probabilities and entropies but no logits and no max-probability, so the
per-example statistics are taken from the same forward's last hidden states (a hook on the backbone) and projected
through `lm_head` chunk by chunk without gradient, with the kernel of the fused path (fused.py); they follow TRL's
labels, which are -100 outside the completion (`completion_only_loss`) or the assistant turns
(`assistant_only_loss`). The scoring pass runs the model's plain forward, as for any causal LM.

Packing and padding-free batches put several examples into one row, which per-example statistics cannot split: they
are refused at construction with the fix.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch

from .alignment import base_model
from .config import ZPDArguments, _config_docstring
from .fused import fused_linear_cross_entropy, logit_transform_fields
from .statistics import IGNORE_INDEX, ExampleStatistics
from .trainer import ZPDTrainerMixin

try:
    from trl import SFTConfig, SFTTrainer
except ImportError as error:  # the optional extra
    raise ImportError(
        "ZPDSFTTrainer extends TRL's SFTTrainer, and TRL is not installed. Install it with `pip install "
        '"hf_zpd[trl]"` (trl==1.16.0, the version hf_zpd is tested with).'
    ) from error


@dataclass
class ZPDSFTConfig(ZPDArguments, SFTConfig):
    __doc__ = _config_docstring(
        "Configuration for [`ZPDSFTTrainer`]: every field of TRL's `SFTConfig`, plus the ZPD curriculum's fields\n"
        "    below (those of [`ZPDArguments`]). `packing` and `padding_free` must stay `False`."
    )

    def __post_init__(self):
        self._validate_zpd_fields()
        super().__post_init__()


class ZPDSFTTrainer(ZPDTrainerMixin, SFTTrainer):
    """
    TRL's [`~trl.SFTTrainer`] whose epochs are drawn around the zone of proximal development, as [`ZPDTrainer`]'s are.

    It takes exactly `SFTTrainer`'s arguments; `args` may be a [`ZPDSFTConfig`] or a plain `SFTConfig` (then the ZPD
    defaults apply). The loss is `SFTTrainer`'s own.

    Example:

    ```python
    >>> from hf_zpd import ZPDSFTConfig, ZPDSFTTrainer
    >>> args = ZPDSFTConfig("out", assistant_only_loss=True, max_length=512)  # doctest: +SKIP
    >>> trainer = ZPDSFTTrainer(model=model, args=args, train_dataset=chats, processing_class=tokenizer)  # doctest: +SKIP
    >>> trainer.train()  # doctest: +SKIP

    ```
    """

    config_class = ZPDSFTConfig
    _tag_names = [*SFTTrainer._tag_names, "hf_zpd", "curriculum"]

    def __init__(self, model=None, args=None, *trainer_args, **trainer_kwargs):
        if args is not None and (getattr(args, "packing", False) or getattr(args, "padding_free", False)):
            setting = "packing=True" if args.packing else "padding_free=True"
            raise ValueError(
                f"ZPDSFTTrainer cannot train with {setting}: it puts several examples into one row, and the curriculum "
                "scores and draws each example on its own. Set packing=False and padding_free=False (eval_packing "
                "may stay on)."
            )
        for name, off in (("prune_fraction", 0), ("token_selection_fraction", None)):
            if args is not None and getattr(args, name, off) not in (off, 0):
                raise ValueError(
                    f"ZPDSFTTrainer does not take {name}: SFTTrainer computes its loss through its own fused head, "
                    "which cannot weigh examples or tokens. Use ZPDTrainer with a supported causal LM (on the chat "
                    f"data, with its labels), or leave {name} unset."
                )
        if args is not None and getattr(args, "fused_cross_entropy", False):
            raise ValueError(
                "ZPDSFTTrainer does not take fused_cross_entropy=True: SFTTrainer computes its loss with a fused LM "
                "head of its own, which already avoids the full logits. Leave fused_cross_entropy=False."
            )
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        base = base_model(self.model)
        transforms = logit_transform_fields(base.config.get_text_config())
        head = base.get_output_embeddings()
        if transforms or type(head) is not torch.nn.Linear:
            reason = (
                f"its config transforms the logits ({', '.join(transforms)})"
                if transforms
                else f"its output embeddings are a {type(head).__name__}, not a plain nn.Linear"
            )
            raise ValueError(
                f"ZPDSFTTrainer computes each example's statistics by projecting the last hidden states through "
                f"lm_head, which {type(base).__name__} does not allow: {reason}. Use ZPDTrainer (the standard path "
                "reads the model's own logits) or a model with a plain lm_head."
            )

    def _loss_and_statistics(self, model, inputs, labels, return_outputs, num_items_in_batch, weights=None):
        # SFTTrainer.compute_loss (trl 1.16) computes the loss through its fused head; its last hidden states are
        # captured on the way, and the statistics are projected from them.
        base = base_model(model)
        with _captured_hidden_states(base.base_model) as captured:
            result = super(ZPDTrainerMixin, self).compute_loss(
                model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch
            )
        loss, outputs = result if return_outputs else (result, None)
        head = base.get_output_embeddings()
        stats = _statistics_from_hidden_states(captured[-1], labels, head, self.args.statistics_chunk_size)
        return loss, outputs, stats


@contextmanager
def _captured_hidden_states(backbone: torch.nn.Module):
    """While active, every forward of `backbone` appends its `last_hidden_state` (detached) to the yielded list."""
    captured: list[torch.Tensor] = []
    handle = backbone.register_forward_hook(lambda module, args, output: captured.append(output[0].detach()))
    try:
        yield captured
    finally:
        handle.remove()


@torch.no_grad()
def _statistics_from_hidden_states(
    hidden_states: torch.Tensor, labels: torch.Tensor, head: torch.nn.Linear, chunk_size: int
) -> ExampleStatistics:
    """Per-example statistics of `head(hidden_states)` against the causal-shifted `labels`, chunk by chunk."""
    hidden_states, labels = hidden_states[:, :-1], labels[:, 1:].to(hidden_states.device)  # (B, T - 1, H), (B, T - 1)
    supervised = (labels != IGNORE_INDEX).nonzero()  # (n, 2)
    example_of_row, position_of_row = supervised.unbind(1)
    rows = hidden_states[example_of_row, position_of_row]  # (n, H)
    _, stats = fused_linear_cross_entropy(
        rows,
        head.weight,
        head.bias,
        labels[example_of_row, position_of_row],
        example_of_row,
        labels.shape[0],
        normaliser=max(int(example_of_row.numel()), 1),
        chunk_size=chunk_size,
    )
    return stats
