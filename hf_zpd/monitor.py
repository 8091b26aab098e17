"""The training batches' statistics for the log: the `zpd/train_*` means and the running perplexity.

`compute_loss` hands each training batch's per-example statistics to [`TrainingMonitor.record`]; the sums stay on the
device, so a step costs no host sync and no collective. They are reduced over the processes only when read: at a
log (the means since the last one), and when the running perplexity is needed (at a log, an epoch end, a checkpoint).
The running perplexity is exp of an exponential moving average of each optimizer step's token-level cross-entropy,
from (CE sum, token count) over all processes, never from the Trainer's logged loss (which for some models counts
unshifted labels).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .statistics import ExampleStatistics, competence

# Layout of the sums since the last log.
WINDOW_FIELDS = ("loss_sum", "num_tokens", "confidence", "entropy", "competence", "num_examples", "num_nonfinite")


class TrainingMonitor:
    """Per-process sums of the training statistics, and the running loss they feed.

    Args:
        device (`torch.device`): where the sums live (the training device).
        competence_weights (`tuple[float, float, float]`): the weights of the logged competence.
        decay (`float`): the moving average's decay (`running_ppl_decay`).
        reduce (`Callable[[torch.Tensor], torch.Tensor]`): sums a tensor over the processes (collective).
        running_loss (`float`, *optional*): the moving average to continue from (a resumed run's).
    """

    def __init__(
        self,
        device: torch.device,
        competence_weights: tuple[float, float, float],
        decay: float,
        reduce: Callable[[torch.Tensor], torch.Tensor],
        running_loss: float | None = None,
    ):
        self.competence_weights = competence_weights
        self.decay = decay
        self.reduce = reduce
        self.running_loss = running_loss
        self.window = torch.zeros(len(WINDOW_FIELDS), dtype=torch.float64, device=device)  # since the last log
        self.step_totals = torch.zeros(2, dtype=torch.float64, device=device)  # (CE sum, tokens) of this step
        self.pending_steps: list[torch.Tensor] = []  # finished steps not folded into the moving average yet

    @torch.no_grad()
    def record(self, stats: ExampleStatistics) -> None:
        """Adds a training batch's statistics. Non-finite examples (NaN or inf logits) are left out of every sum, so
        they cannot poison the running perplexity, and counted instead; examples without supervised tokens carry
        no statistic at all."""
        loss, confidence, entropy = stats.loss, stats.confidence, stats.entropy
        has_targets = stats.num_tokens > 0
        finite = torch.isfinite(loss) & torch.isfinite(confidence) & torch.isfinite(entropy)
        example_competence = competence(loss, confidence, entropy, stats.vocab_size, self.competence_weights)
        zero = torch.zeros((), dtype=torch.float64, device=loss.device)
        step = torch.stack([torch.where(finite, stats.loss_sum, zero).sum(), stats.num_tokens[finite].sum()])
        window = torch.stack(
            [
                step[0],
                step[1],
                torch.where(finite, confidence, zero).sum(),
                torch.where(finite, entropy, zero).sum(),
                torch.where(finite, example_competence, zero).sum(),
                finite.sum().double(),
                (has_targets & ~finite).sum().double(),
            ]
        )
        self.step_totals += step.to(self.step_totals.device)
        self.window += window.to(self.window.device)

    def end_step(self) -> None:
        """Closes an optimizer step: its totals wait, on the device, to be folded into the moving average."""
        self.pending_steps.append(self.step_totals.clone())
        self.step_totals.zero_()

    def fold(self) -> None:
        """Folds the steps since the last fold into the moving average, from sums over every process (collective:
        every process has run the same optimizer steps, so all of them call it together)."""
        if not self.pending_steps:
            return
        steps = self.reduce(torch.stack(self.pending_steps)).cpu().tolist()
        self.pending_steps = []
        for loss_sum, num_tokens in steps:
            if num_tokens == 0:
                continue
            mean_loss = loss_sum / num_tokens
            previous = self.running_loss
            self.running_loss = mean_loss if previous is None else self.decay * previous + (1 - self.decay) * mean_loss

    def running_ppl(self) -> float:
        """exp of the moving average (NaN before the first step)."""
        return math.exp(self.running_loss) if self.running_loss is not None else math.nan

    def log_entries(self) -> dict[str, float]:
        """The `zpd/*` entries of a training log: the running perplexity and the means since the last log, over
        every process (collective)."""
        self.fold()
        totals = dict(zip(WINDOW_FIELDS, self.reduce(self.window.clone()).cpu().tolist(), strict=True))
        self.window.zero_()
        entries = {"zpd/running_ppl": self.running_ppl()}
        if totals["num_tokens"] > 0:
            entries["zpd/train_loss"] = totals["loss_sum"] / totals["num_tokens"]
        if totals["num_examples"] > 0:
            for name in ("confidence", "entropy", "competence"):
                entries[f"zpd/train_{name}"] = totals[name] / totals["num_examples"]
        entries["zpd/train_nonfinite"] = totals["num_nonfinite"]
        return entries
