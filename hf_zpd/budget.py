"""How long a run's epochs are, and what each scoring pass scores, from the training set and the run's budget.

No `transformers` import. The Trainer reads the training loader's length once, before the first step, to fix
`max_steps` and the learning-rate schedule, so every epoch of a `ZPDTrainer` run has one length, decided here before
training:

    epoch length  N = ceil(dataset_size x epoch_fraction) - prune_draws
    prune_draws   floor(ceil(dataset_size x epoch_fraction) x prune_fraction / 2)   (InfoBatch: about half an epoch is
                  below the level, the mastered region a share r of whose draws every pruned epoch leaves out)

With `epoch_fraction=None` (the budget mode; the default is 1.0), a run of one pass or more keeps whole-pass epochs
(so a one-epoch run is the plain Trainer's own), and a budget under one pass (`max_steps` below one epoch, or
`num_train_epochs` under 1) is split into `AUTO_EPOCHS` epochs, so that the curriculum composes all but the first
within it; a `num_train_epochs` budget is then kept as the optimizer steps it meant over whole passes. With
`scoring_pool_size=None`, a scoring pass scores the whole set when epochs are whole passes, and twice an epoch's
samples otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .sampler import samples_per_epoch

# A budget under one pass is split into this many epochs.
AUTO_EPOCHS = 4


@dataclass(frozen=True)
class EpochSizes:
    """The sizes one run trains with; see the module docstring.

    Args:
        epoch_fraction (`float`): the epoch fraction in force (the setting, or the one chosen for a budget).
        num_samples (`int`): N, every epoch's length, pruned draws left out.
        prune_draws (`int`): the draws a pruned epoch leaves out.
        scoring_pool_size (`int`, *optional*): the examples a scoring pass scores; `None`: all of them.
        budget_steps (`int`, *optional*): a `num_train_epochs` budget under one pass, as optimizer steps, when the
            epochs were shortened for it (the Trainer must then take it as `max_steps`).
        steps_per_pass (`int`): optimizer steps of one pass over the training set.
        budget (`int`): the run's optimizer steps.
        chosen (`bool`): whether the epoch fraction was chosen for a budget under one pass.
    """

    epoch_fraction: float
    num_samples: int
    prune_draws: int
    scoring_pool_size: int | None
    budget_steps: int | None
    steps_per_pass: int
    budget: int
    chosen: bool


def epoch_sizes(
    dataset_size: int,
    per_device_batch_size: int,
    world_size: int,
    gradient_accumulation_steps: int,
    max_steps: int,
    num_train_epochs: float,
    epoch_fraction: float | None,
    prune_fraction: float = 0.0,
    scoring_pool_size: int | None = None,
) -> EpochSizes:
    """The [`EpochSizes`] of a run.

    Args:
        dataset_size (`int`), per_device_batch_size (`int`), world_size (`int`), gradient_accumulation_steps (`int`):
            the training set and how the Trainer batches it.
        max_steps (`int`), num_train_epochs (`float`): the Trainer's budget (`max_steps` > 0 wins, as in the Trainer).
        epoch_fraction (`float`, *optional*), prune_fraction (`float`), scoring_pool_size (`int`, *optional*): the
            settings (`None`: chosen as the module docstring says).

    Example:

    ```python
    >>> sizes = epoch_sizes(6400, 16, 1, 1, max_steps=128, num_train_epochs=3, epoch_fraction=None)
    >>> sizes.num_samples, sizes.scoring_pool_size, sizes.chosen  # 4 epochs of 32 steps, scored from 1,024
    (512, 1024, True)

    ```
    """
    # The steps of one pass, as the Trainer counts them (transformers 5.24 `set_initial_training_values` over
    # accelerate's sharded loader: batches per process, then per optimizer step).
    batches = math.ceil(math.ceil(dataset_size / per_device_batch_size) / max(world_size, 1))
    steps_per_pass = max(math.ceil(batches / gradient_accumulation_steps), 1)
    budget = max_steps if max_steps > 0 else math.ceil(num_train_epochs * steps_per_pass)
    fraction, budget_steps, chosen = epoch_fraction, None, False
    if fraction is None:
        fraction = 1.0
        if AUTO_EPOCHS <= budget < steps_per_pass:
            global_batch = per_device_batch_size * max(world_size, 1) * gradient_accumulation_steps
            fraction = min(1.0, math.ceil(budget / AUTO_EPOCHS) * global_batch / dataset_size)
            budget_steps = budget if max_steps <= 0 else None
            chosen = True
    unpruned = samples_per_epoch(dataset_size, fraction)
    prune_draws = min(math.floor(unpruned * prune_fraction / 2), unpruned - 1)
    num_samples = unpruned - prune_draws
    pool = scoring_pool_size
    if pool is None and fraction < 1.0:
        pool = min(dataset_size, 2 * num_samples)
    return EpochSizes(fraction, num_samples, prune_draws, pool, budget_steps, steps_per_pass, budget, chosen)
