"""A fused output projection and cross-entropy for causal LMs: the loss, its gradient and the per-example statistics
in one pass over the supervised rows, so that the full `(B, T, V)` logits never exist.

This is the technique of Liger-Kernel's fused linear cross-entropy and of Cut Cross-Entropy, in plain PyTorch. For
the supervised rows h_r (labels != -100) of the last hidden states, with output weight W `(V, H)` and bias b, each
chunk of rows is projected, used and dropped:

    z_r          = W h_r + b                                   (in the model's compute dtype, then upcast to fp32)
    loss         L = sum_r [logsumexp(z_r) - z_r[y_r]] / N     (N = num_items_in_batch, or the number of rows)
    dL/dz_r      = (softmax(z_r) - onehot(y_r)) / N
    dL/dh_r      = W^T dL/dz_r,    dL/dW = sum_r dL/dz_r h_r^T,    dL/db = sum_r dL/dz_r

and the statistics of `statistics.py` (loss, confidence = max prob, entropy / log V, per example) come from the same
fp32 chunk. The gradients are computed during the forward (there is no second projection in the backward), kept
until the backward, and scaled there by the incoming gradient.

Checked against transformers 5.24: the fused path relies on the forward of the allowlisted causal LMs (see
[`check_fused_support`]) computing `logits = self.lm_head(hidden_states)` and then
`self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)` with nothing in between.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .statistics import IGNORE_INDEX, ExampleStatistics, chunk_statistics

# Causal LMs whose forward was read in transformers 5.24 (`modeling_<name>.py`): after the decoder, it does exactly
#     hidden_states = slice_logits_to_keep(hidden_states, logits_to_keep)
#     logits = self.lm_head(hidden_states)
#     loss = self.loss_function(logits, labels, vocab_size=self.config.vocab_size, **kwargs)
# with no scaling, softcapping or upcast between the projection and the loss. Each is in tests/test_fused.py's
# equality tests. Do not add a class without reading its forward and adding it there.
FUSED_SUPPORTED_CLASSES = frozenset(
    {
        "GPT2LMHeadModel",
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "SmolLM3ForCausalLM",
    }
)

# Config fields by which some transformers 5.24 models transform the logits between `lm_head` and the loss (Gemma 2/3
# softcapping, Cohere's scale, Granite's scaling, ...). None of the allowlisted forwards reads them, so a config that
# sets one was made for another architecture, or expects a behaviour the fused path would silently drop.
_LOGIT_TRANSFORM_FIELDS = (
    "final_logit_softcapping",
    "logit_softcapping",
    "logits_soft_cap",
    "output_logit_soft_cap",
    "softcap",
    "logit_scale",
    "logits_scaling",
    "logits_mup_width_multiplier",
    "lm_head_multiplier",
)

_STANDARD_PATH = "Leave the fused head off (the standard path computes the full logits) to train this model."


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `hidden_rows @ weight.T + bias` against `targets`, without materialising all the logits.

    Formulas in the module docstring. Only supervised rows are passed in: the caller selects them (and the causal
    shift) beforehand, so every row has a valid target.

    The forward returns four tensors: the scalar loss (differentiable with respect to `hidden_rows`, `weight` and
    `bias`) and the per-example float64 sums of loss, confidence and normalised entropy (not differentiable), in
    the layout of [`ExampleStatistics`].

    Args (of `apply`, positional):
        hidden_rows (`torch.Tensor` of shape `(n, H)`):
            The hidden states of the supervised rows.
        weight (`torch.Tensor` of shape `(V, H)`):
            The output projection (the `lm_head` weight, possibly tied to the input embeddings).
        bias (`torch.Tensor` of shape `(V,)` or `None`):
            Its bias.
        targets (`torch.Tensor` of shape `(n,)`):
            The target token of each row.
        example_of_row (`torch.Tensor` of shape `(n,)`):
            The example (batch index) each row belongs to, for the statistics.
        num_examples (`int`):
            The batch size B: the length of the statistics.
        normaliser (`torch.Tensor` or `int` or `float`):
            N, what the summed loss is divided by: `num_items_in_batch`, or `n` for a mean.
        chunk_size (`int`):
            How many rows are projected at once: the memory is O(chunk_size x V) instead of O(n x V).
        compute_grad (`bool`, *optional*, defaults to `True`):
            Whether to compute the gradients during the forward. Pass `False` under `torch.no_grad()` (scoring), where
            no backward follows.
        row_weights (`torch.Tensor` of shape `(n,)`, *optional*):
            A weight per row: the loss is sum_r w_r CE_r / N and each row's gradient is scaled by w_r (InfoBatch's
            rescaled pruning, Rho-1's token selection). The statistics stay unweighted.
    """

    @staticmethod
    def forward(ctx, hidden_rows, weight, bias, targets, example_of_row, num_examples, normaliser, chunk_size,
                compute_grad=True, row_weights=None):  # fmt: skip
        # The arguments' types and shapes are in the class docstring; returns (loss, loss_sum, confidence_sum,
        # entropy_sum), the last three float64 of shape (num_examples,).
        # For a chunk of rows, with z' = z - max(z) and s = sum_v exp(z'_v) (as in statistics.py):
        #   -log p(y) = log s - z'_y,   max_v p_v = 1 / s,   H(p) = log s - sum_v exp(z'_v) z'_v / s,
        #   dL/dz = (exp(z') / s - onehot(y)) / N.
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
        num_rows, _ = hidden_rows.shape
        vocab_size = weight.shape[0]
        if vocab_size < 2:
            raise ValueError(f"The output projection has {vocab_size} row; the statistics need at least 2 classes.")
        device = hidden_rows.device
        # The standard path runs lm_head in the model's dtype (or autocast's) and upcasts the logits for the loss
        # (ForCausalLMLoss: `logits.float()`). Mirror both. float64 stays float64 (for gradcheck).
        compute_dtype = (
            torch.get_autocast_dtype(device.type)
            if torch.is_autocast_enabled(device.type) and hidden_rows.dtype != torch.float64
            else hidden_rows.dtype
        )
        upcast_dtype = torch.promote_types(compute_dtype, torch.float32)
        weight_c = weight.to(compute_dtype)  # (V, H), a no-op without autocast
        bias_c = None if bias is None else bias.to(compute_dtype)  # (V,)
        log_vocab = math.log(vocab_size)
        normaliser = torch.as_tensor(normaliser, dtype=torch.float64, device=device)
        inverse_normaliser = normaliser.reciprocal().to(upcast_dtype)  # a 0-dim tensor: no host sync

        stats = ExampleStatistics.zeros(num_examples, vocab_size, device)  # float64 sums, (B,) each
        weighted_loss = torch.zeros((), dtype=torch.float64, device=device)  # sum_r w_r CE_r, with row weights
        if compute_grad:
            grad_rows = torch.empty_like(hidden_rows)  # (n, H); every row is written below
            # A single GEMM in the standard path accumulates dL/dW in fp32 even for bf16 inputs; summing bf16
            # per-chunk results would lose that, so accumulate in (at least) fp32 and cast once at the end.
            accumulate_dtype = torch.promote_types(weight.dtype, torch.float32)
            grad_weight = torch.zeros(weight.shape, dtype=accumulate_dtype, device=device)  # (V, H)
            grad_bias = None if bias is None else torch.zeros(vocab_size, dtype=accumulate_dtype, device=device)

        # Every cast below is explicit. Autocast must not touch the rest: on CPU it runs `linalg_vecdot` (the entropy
        # term) in bf16, and the statistics are defined in fp32.
        with torch.autocast(device.type, enabled=False):
            for start in range(0, num_rows, chunk_size):
                stop = min(start + chunk_size, num_rows)
                rows = hidden_rows[start:stop].to(compute_dtype)  # (c, H)
                chunk_targets = targets[start:stop]  # (c,)
                logits = nn.functional.linear(rows, weight_c, bias_c)  # (c, V), compute dtype
                # The only vocabulary-sized tensors alive: this upcast copy (the same tensor in fp32) and its exp.
                shifted = logits.to(upcast_dtype)  # (c, V)
                del logits
                token = chunk_statistics(shifted, chunk_targets, log_vocab)  # the kernel of the standard path
                del shifted
                stats.add_rows(example_of_row[start:stop], token)
                chunk_weights = None if row_weights is None else row_weights[start:stop].to(upcast_dtype)  # (c,)
                if chunk_weights is not None:
                    weighted_loss += (token.loss.double() * chunk_weights.double()).sum()
                if not compute_grad:
                    continue
                # dL/dz in place of the exponentials: softmax, minus one at the target, over N.
                grad_logits = token.exponentials.div_(token.normalisers.unsqueeze(1))
                grad_logits.scatter_add_(1, chunk_targets.unsqueeze(1), grad_logits.new_full((stop - start, 1), -1.0))
                grad_logits.mul_(inverse_normaliser)
                if chunk_weights is not None:
                    grad_logits.mul_(chunk_weights.unsqueeze(1))
                # The standard path's `.float()` hands the linear layer a gradient in the compute dtype: round alike.
                grad_logits = grad_logits.to(compute_dtype)  # (c, V)
                grad_rows[start:stop] = (grad_logits @ weight_c).to(hidden_rows.dtype)
                if grad_weight.dtype == compute_dtype:
                    grad_weight.addmm_(grad_logits.T, rows)  # in place: no (V, H) temporary
                else:
                    grad_weight += grad_logits.T @ rows
                if grad_bias is not None:
                    grad_bias += grad_logits.sum(dim=0)
                del token, grad_logits

        loss_sum, confidence_sum, entropy_sum = stats.loss_sum, stats.confidence_sum, stats.entropy_sum
        loss = ((loss_sum.sum() if row_weights is None else weighted_loss) / normaliser).to(upcast_dtype)
        ctx.mark_non_differentiable(loss_sum, confidence_sum, entropy_sum)
        ctx.has_bias = bias is not None
        if compute_grad:
            grad_weight = grad_weight.to(weight.dtype)
            grad_bias = grad_bias.to(bias.dtype) if grad_bias is not None else None
            ctx.save_for_backward(grad_rows, grad_weight, grad_bias)
        return loss, loss_sum, confidence_sum, entropy_sum

    @staticmethod
    def backward(ctx, grad_loss: torch.Tensor, *_unused_statistics_grads):
        grad_rows, grad_weight, grad_bias = ctx.saved_tensors
        # Out of place: the saved gradients must survive a second backward with retain_graph.
        grad_rows = grad_rows * grad_loss.to(grad_rows.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = grad_weight * grad_loss.to(grad_weight.dtype) if ctx.needs_input_grad[1] else None
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_bias = grad_bias * grad_loss.to(grad_bias.dtype)
        else:
            grad_bias = None
        return grad_rows, grad_weight, grad_bias, None, None, None, None, None, None, None


def fused_linear_cross_entropy(
    hidden_rows: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    example_of_row: torch.Tensor,
    num_examples: int,
    normaliser: torch.Tensor | int | float,
    chunk_size: int = 256,
    row_weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, ExampleStatistics]:
    """[`FusedLinearCrossEntropy`], with the gradients computed only when a backward can follow.

    Args: those of [`FusedLinearCrossEntropy`] (`chunk_size` defaults to 256); `row_weights` `(n,)`, if given,
    weighs each row's loss and gradient (the statistics stay unweighted).

    Returns:
        `tuple[torch.Tensor, ExampleStatistics]`: the scalar loss and the per-example statistics (float64, detached).
    """
    compute_grad = torch.is_grad_enabled() and any(
        tensor is not None and tensor.requires_grad for tensor in (hidden_rows, weight, bias)
    )
    loss, loss_sum, confidence_sum, entropy_sum = FusedLinearCrossEntropy.apply(
        hidden_rows,
        weight,
        bias,
        targets,
        example_of_row,
        num_examples,
        normaliser,
        chunk_size,
        compute_grad,
        row_weights,
    )
    num_tokens = torch.bincount(example_of_row, minlength=num_examples).to(torch.float64)  # (B,)
    return loss, ExampleStatistics(loss_sum, confidence_sum, entropy_sum, num_tokens, weight.shape[0])


@torch.no_grad()
def row_losses(
    hidden_rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, targets: torch.Tensor, chunk_size: int
) -> torch.Tensor:
    """Each row's cross-entropy `-log softmax(W h_r + b)[y_r]` in float32, `chunk_size` rows projected at a time.

    Args:
        hidden_rows (`torch.Tensor` of shape `(n, H)`), weight (`(V, H)`), bias (`(V,)` or `None`), targets (`(n,)`).

    Returns:
        `torch.Tensor` of shape `(n,)`.
    """
    losses = torch.empty(hidden_rows.shape[0], dtype=torch.float32, device=hidden_rows.device)
    for start in range(0, hidden_rows.shape[0], chunk_size):
        logits = nn.functional.linear(hidden_rows[start : start + chunk_size], weight, bias).float()  # (c, V)
        losses[start : start + chunk_size] = nn.functional.cross_entropy(
            logits, targets[start : start + chunk_size], reduction="none"
        )
    return losses


def logit_transform_fields(config) -> list[str]:
    """The config's settings (`field=value`) that transform the logits between `lm_head` and the loss."""
    return [
        f"{field}={getattr(config, field)!r}"
        for field in _LOGIT_TRANSFORM_FIELDS
        if getattr(config, field, None) is not None
    ]


def fused_head_setting(
    model: nn.Module, choice: bool | None, reads_logits: bool, wrappers: list[str]
) -> tuple[bool, str | None]:
    """Whether a trainer takes the fused head, and why not: `fused_cross_entropy` as set, or with `None` on where it
    is safe.

    Safe means: [`check_fused_support`] passes (a causal LM on the allowlist, with a plain `lm_head`, no logit
    transform, its own loss function), nothing reads the full logits (`reads_logits`: label smoothing or a
    `compute_loss_func`), and nothing wraps or shards the head (`wrappers`: `torch_compile`, FSDP, DeepSpeed). `True`
    where it does not apply is a `ValueError` naming the reason.

    Args:
        model (`nn.Module`): the unwrapped model.
        choice (`bool`, *optional*): the setting.
        reads_logits (`bool`): label smoothing or a `compute_loss_func` is in use.
        wrappers (`list[str]`): the names of what wraps or shards the model.

    Returns:
        `tuple[bool, str | None]`: the decision, and the reason the fused head does not apply (`None` if it does).
    """
    if choice is False:
        return False, None
    reason = None
    if reads_logits:
        reason = (
            "fused_cross_entropy computes the model's own cross-entropy without the full logits, but label smoothing "
            "and compute_loss_func read those logits. Set fused_cross_entropy=False, or drop label_smoothing_factor / "
            "compute_loss_func."
        )
    else:
        try:
            check_fused_support(model)
        except ValueError as error:
            reason = str(error)
    if choice is True:
        if reason is not None:
            raise ValueError(reason)
        return True, None
    if reason is None and wrappers:
        reason = f"{wrappers[0]} wraps or shards the output layer; set fused_cross_entropy=True to try it anyway"
    return reason is None, reason


def check_fused_support(model: nn.Module) -> None:
    """Raises unless `model` is a causal LM whose loss the fused head reproduces exactly.

    The fused head replaces `lm_head` by a pass-through and the loss function by the fused one, so it is exact only
    when the forward does nothing to the logits between the two. That was checked by reading the forward of each
    class in `FUSED_SUPPORTED_CLASSES` (transformers 5.24); any other class is refused rather than trusted.

    Args:
        model (`nn.Module`):
            The unwrapped model (`accelerator.unwrap_model(model)`, not the DDP wrapper).

    Raises:
        `ValueError`: naming the model class and the reason, when the fused head does not apply.
    """
    name = type(model).__name__
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False):
        raise ValueError(
            f"The fused causal-LM head does not support {name}: it is an encoder-decoder, whose decoder logits are "
            f"not computed by the causal-LM forward the fused head replaces. {_STANDARD_PATH}"
        )
    if name not in FUSED_SUPPORTED_CLASSES:
        if name.endswith(("ForSequenceClassification", "ForTokenClassification", "ForQuestionAnswering")):
            reason = "it is a classifier, whose logits are small and whose loss is not the causal-LM cross-entropy"
        else:
            reason = "its forward has not been checked to project and take the loss with nothing in between"
        raise ValueError(
            f"The fused causal-LM head does not support {name}: {reason}. It supports "
            f"{', '.join(sorted(FUSED_SUPPORTED_CLASSES))} (checked against transformers 5.24). {_STANDARD_PATH}"
        )
    if not type(model).__module__.startswith("transformers.models."):
        raise ValueError(
            f"The fused causal-LM head does not support {name} from {type(model).__module__}: only the transformers "
            f"class of that name was checked, and a subclass may change its forward. {_STANDARD_PATH}"
        )
    transforms = logit_transform_fields(config)
    if transforms:
        raise ValueError(
            f"The fused causal-LM head does not support {name} with config.{transforms[0]}: it transforms the "
            f"logits before the loss, which the fused head would skip. {_STANDARD_PATH}"
        )
    head = model.get_output_embeddings()
    if isinstance(head, _PassThroughHead):
        raise ValueError(f"The fused causal-LM head is already active on this {name}; contexts cannot be nested.")
    if type(head) is not nn.Linear or head is not getattr(model, "lm_head", None):
        raise ValueError(
            f"The fused causal-LM head does not support {name} with output embeddings of type "
            f"{type(head).__name__}: it needs a plain `nn.Linear` `lm_head` (not a quantised or adapter layer), "
            f"whose weight it multiplies itself. {_STANDARD_PATH}"
        )
    vocab_size = getattr(config, "vocab_size", None)
    if head.weight.dim() != 2 or head.weight.shape[0] != vocab_size:
        raise ValueError(
            f"The fused causal-LM head does not support {name} with an lm_head weight of shape "
            f"{tuple(head.weight.shape)} and config.vocab_size={vocab_size} (a sharded weight, e.g. DeepSpeed ZeRO-3 "
            f"or FSDP, or a resized vocabulary). {_STANDARD_PATH}"
        )
    # transformers 5.24: `loss_function` resolves `loss_type` to ForCausalLMLoss for these classes, unless a user set
    # their own. A custom one would be bypassed by the fused head.
    from transformers.loss.loss_utils import ForCausalLMLoss

    if model.loss_function is not ForCausalLMLoss:
        raise ValueError(
            f"The fused causal-LM head does not support {name} with the custom loss function "
            f"{getattr(model.loss_function, '__name__', model.loss_function)!r}: it reproduces ForCausalLMLoss "
            f"only. {_STANDARD_PATH}"
        )


class _PassThroughHead(nn.Module):
    """Stands in for `lm_head` while the fused head is active: returns the hidden states unchanged.

    It registers the very `weight` and `bias` Parameters of the `nn.Linear` it replaces, so `state_dict()`,
    `named_parameters()` and tied weights look the same inside the context as outside.
    """

    def __init__(self, head: nn.Linear):
        super().__init__()
        self.weight = head.weight
        self.register_parameter("bias", head.bias)
        self.in_features, self.out_features = head.in_features, head.out_features
        # The tensor the last forward returned, so the loss function can check that it receives it unchanged.
        self.last_output: torch.Tensor | None = None

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        self.last_output = hidden_states
        return hidden_states

    def extra_repr(self) -> str:
        return f"passes (..., {self.in_features}) hidden states through; lm_head projects them in the fused loss"


class FusedHeadCapture:
    """What [`fused_causal_lm_head`] yields: the statistics of the last forward that computed a loss.

    Attributes:
        example_weights (`torch.Tensor` of shape `(B,)`, *optional*):
            Set before a forward to weigh each example's loss and gradient (the statistics stay unweighted).
        row_selector (`Callable`, *optional*):
            Set before a forward to weigh each supervised token: called with (example_of_row, position_of_row,
            row_losses) of the shifted supervised rows, the learner's per-token loss computed first without gradient,
            it returns each row's weight (Rho-1's token selection). The statistics still cover every token.
        statistics ([`ExampleStatistics`] or `None`):
            Per-example sums (float64, detached) of the last loss computed inside the context, aligned like
            `per_example_statistics(*align_causal_labels(logits, labels))` (position t predicts label t + 1), or
            with the `shift_labels` the forward received. `None` until a forward with labels has run.
        chunk_size (`int`):
            How many supervised rows are projected to the vocabulary at once.
    """

    def __init__(self, model: nn.Module, head: _PassThroughHead, chunk_size: int):
        self.statistics: ExampleStatistics | None = None
        self.chunk_size = chunk_size
        # Per-example loss weights (B,) for the next forward, or None (every example weighs 1).
        self.example_weights: torch.Tensor | None = None
        self.row_selector = None
        self._name = type(model).__name__
        self._head = head

    def loss_function(
        self,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
        vocab_size: int,
        num_items_in_batch: torch.Tensor | int | None = None,
        ignore_index: int = IGNORE_INDEX,
        shift_labels: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        """Drop-in for transformers 5.24 `ForCausalLMLoss` (same arguments, same value) on the hidden states.

        `logits` are the hidden states `(B, T, H)` that the pass-through head returned. The labels are shifted as
        `ForCausalLMLoss` does (pad with `ignore_index` on the right, drop the first), which is the trainer's
        `align_causal_labels` plus an ignored last position; the loss is summed and divided by `num_items_in_batch`
        when given, else averaged over the supervised tokens.
        """
        hidden_states = logits
        if hidden_states is not self._head.last_output:
            raise RuntimeError(
                f"{self._name}'s forward changed the output of lm_head before the loss, which the fused head cannot "
                f"reproduce (checked against transformers 5.24 only). {_STANDARD_PATH}"
            )
        self._head.last_output = None
        weight, bias = self._head.weight, self._head.bias
        if vocab_size != weight.shape[0]:
            raise ValueError(f"vocab_size={vocab_size} does not match the lm_head weight {tuple(weight.shape)}.")
        if shift_labels is None:
            labels = nn.functional.pad(labels, (0, 1), value=ignore_index)
            shift_labels = labels[..., 1:]
        shift_labels = shift_labels.to(hidden_states.device)
        if shift_labels.shape != hidden_states.shape[:-1]:
            raise ValueError(
                f"The fused head needs one label per position: labels of shape {tuple(shift_labels.shape)} against "
                f"hidden states {tuple(hidden_states.shape)} (is logits_to_keep set?)."
            )
        hidden_size = hidden_states.shape[-1]
        shift_labels = shift_labels.reshape(shift_labels.shape[0] if shift_labels.dim() > 1 else 1, -1)  # (B, T)
        num_examples, seq_len = shift_labels.shape
        supervised = (shift_labels != ignore_index).nonzero()  # (n, 2): example, position
        example_of_row, position_of_row = supervised.unbind(1)
        targets = shift_labels[example_of_row, position_of_row]  # (n,)
        # index_select's backward scatters the row gradients into zeros of shape (B * T, H): unsupervised positions
        # get a zero gradient, as they do through F.cross_entropy's ignore_index.
        rows = hidden_states.reshape(-1, hidden_size).index_select(0, example_of_row * seq_len + position_of_row)
        if num_items_in_batch is None:
            normaliser = example_of_row.numel()  # a mean over supervised tokens (NaN when there are none, as there)
        elif torch.is_tensor(num_items_in_batch):
            normaliser = num_items_in_batch.to(hidden_states.device)
        else:
            normaliser = num_items_in_batch
        row_weights = None
        if self.example_weights is not None:
            row_weights = self.example_weights.to(hidden_states.device)[example_of_row]  # (n,)
        if self.row_selector is not None:
            learner = row_losses(rows.detach(), weight, bias, targets, self.chunk_size)  # (n,), no gradient
            selected = self.row_selector(example_of_row, position_of_row, learner).to(rows.dtype)
            row_weights = selected if row_weights is None else row_weights * selected
        loss, self.statistics = fused_linear_cross_entropy(
            rows, weight, bias, targets, example_of_row, num_examples, normaliser, self.chunk_size, row_weights
        )
        return loss


@contextmanager
def fused_causal_lm_head(model: nn.Module, chunk_size: int = 256) -> Iterator[FusedHeadCapture]:
    """While active, `model`'s forward computes its loss with [`FusedLinearCrossEntropy`]: no full logits.

    `model.lm_head` is replaced by a pass-through and `model.loss_function` by the fused loss; both are restored on
    exit, also when the forward raises. The same Parameters stay registered under the same names, so `state_dict`,
    tied weights and a DDP wrapper built around `model` are unaffected, and the `lm_head` weight receives exactly
    the gradient of the standard path. The backward may run after the context has exited.

    For training only: inside the context the output's `logits` are the last hidden states `(B, T, H)`, not
    vocabulary scores; read the statistics from the yielded capture instead. Label smoothing or a custom
    `compute_loss_func` read those logits, so they cannot be combined with the fused head.

    Args:
        model (`nn.Module`):
            The unwrapped `PreTrainedModel` (see [`check_fused_support`], which this calls first).
        chunk_size (`int`, *optional*, defaults to `256`):
            How many supervised rows are projected to the vocabulary at once. Memory grows as
            `chunk_size x vocab_size` floats (about three such tensors at a time); larger chunks make larger GEMMs.

    Yields:
        [`FusedHeadCapture`]: `capture.statistics` holds the per-example statistics of the last forward with labels.

    Example:

    ```python
    >>> with fused_causal_lm_head(model) as capture:  # doctest: +SKIP
    ...     loss = model(input_ids=ids, labels=labels, num_items_in_batch=num_items).loss
    >>> loss.backward()  # doctest: +SKIP
    >>> capture.statistics.loss  # per-example mean loss  # doctest: +SKIP
    ```
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be at least 1, got {chunk_size}.")
    check_fused_support(model)
    original_head = model.lm_head
    had_loss_function = "_loss_function" in model.__dict__
    original_loss_function = model.__dict__.get("_loss_function")
    head = _PassThroughHead(original_head)
    capture = FusedHeadCapture(model, head, chunk_size)
    try:
        # transformers 5.24: the allowlisted forwards call `self.lm_head(...)` and `self.loss_function(...)`;
        # `loss_function`'s setter stores `_loss_function`, which its getter returns before `loss_type`.
        model.lm_head = head
        model.loss_function = capture.loss_function
        yield capture
    finally:
        model.lm_head = original_head
        if had_loss_function:
            model._loss_function = original_loss_function
        else:
            model.__dict__.pop("_loss_function", None)
        head.last_output = None
