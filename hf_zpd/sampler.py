"""The epoch order: a fixed number of samples per epoch, laid out from the epoch's draw counts.

Numpy and torch, no `transformers` import. Each composed epoch's counts come from the epoch composition
(selection.py); its order is one shuffle of the composed draws followed by one shuffle of the annealing draws, so the
uniform annealing part is where it belongs, at the end. An epoch drawn uniformly (no scores yet) is drawn in exactly
the plain Trainer's order ([`trainer_order`]), so the first epoch of a `ZPDTrainer` run and of a `Trainer` run with
the same seed see the same batches. Every order is a pure function of (counts, seed, epoch): every process computes
the same global order (accelerate then gives each process a disjoint share of its batches), and a resumed run draws
exactly what the uninterrupted run drew.

Epochs are numbered as the Trainer logs them: the first epoch is epoch 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

from .selection import EpochPlan

# The tag of the order's random stream (the composition's streams use others).
_ORDER = 0


def samples_per_epoch(dataset_size: int, epoch_fraction: float = 1.0) -> int:
    """`ceil(dataset_size * epoch_fraction)`, at least 1: the fixed length of every epoch."""
    if dataset_size < 1:
        raise ValueError("The training dataset is empty: there is nothing to draw an epoch from.")
    return max(1, exact_ceil(dataset_size * epoch_fraction))


def exact_ceil(value: float) -> int:
    """`ceil` that ignores floating-point noise: 100 * 0.07 is 7.000000000000001, and means 7."""
    return math.ceil(round(value, 9))


def trainer_order(dataset_size: int, num_samples: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which the plain Trainer draws epoch `epoch` (1 = the first), cut to `num_samples`.

    Checked against transformers 5.24 and accelerate 1.15: `Trainer._get_train_sampler` returns
    `RandomSampler(train_dataset)`, which `accelerate.data_loader.prepare_data_loader` replaces by a
    `SeedableRandomSampler` (`accelerator_config.use_seedable_sampler=True`, the default). Before the Trainer's 0-based
    epoch e its generator is seeded with `seed + e`, where the seed is `data_seed`, else `torch.random.initial_seed()`
    when the loader is prepared (the Trainer's `seed`, which `train()` sets), and it yields
    `torch.randperm(len(dataset), generator=generator)`. The same permutation is computed here.

    Example:

    ```python
    >>> trainer_order(5, 5, seed=42, epoch=1).tolist() == torch.randperm(5, generator=torch.Generator().manual_seed(42)).tolist()
    True

    ```
    """
    device = torch.get_default_device() if hasattr(torch, "get_default_device") else "cpu"
    generator = torch.Generator(device=device)
    generator.manual_seed(seed + epoch - 1)
    return torch.randperm(dataset_size, generator=generator).numpy().astype(np.int64)[:num_samples]


def epoch_order(counts: np.ndarray, anneal_counts: np.ndarray, seed: int, epoch: int) -> np.ndarray:
    """The epoch's dataset indices in training order: the composed draws shuffled, then the annealing draws shuffled.

    Args:
        counts (`np.ndarray` of int, shape `(dataset_size,)`): every draw of the epoch, annealing included.
        anneal_counts (`np.ndarray` of int, shape `(dataset_size,)`): the annealing part of `counts`.
        seed (`int`), epoch (`int`): the shuffles are a pure function of these and of the counts.

    Returns:
        `np.ndarray` of int64 and shape `(counts.sum(),)`.

    Example:

    ```python
    >>> import numpy as np
    >>> order = epoch_order(np.array([0, 2, 1, 1]), np.array([0, 0, 0, 1]), seed=0, epoch=2)
    >>> sorted(order[:3].tolist()), order[3:].tolist()  # the annealing draw (index 3) comes last
    ([1, 1, 2], [3])

    ```
    """
    counts, anneal_counts = np.asarray(counts, dtype=np.int64), np.asarray(anneal_counts, dtype=np.int64)
    if (counts < 0).any() or (anneal_counts < 0).any() or (anneal_counts > counts).any():
        raise ValueError("Draw counts must be non-negative, and the annealing counts a part of them.")
    rng = np.random.default_rng([seed, epoch, _ORDER])
    indices = np.arange(counts.size, dtype=np.int64)
    composed = rng.permutation(np.repeat(indices, counts - anneal_counts))
    annealed = rng.permutation(np.repeat(indices, anneal_counts))
    return np.concatenate([composed, annealed]).astype(np.int64)


class ZPDSampler(Sampler[int]):
    """Yields each epoch's draw; its length never changes between epochs.

    The Trainer reads `len(train_dataloader)` once, before training, to set `max_steps` and the learning-rate
    schedule, so a sampler whose length varied would silently end training early or skip batches.

    On purpose the sampler has no `generator` attribute and does not subclass `RandomSampler`: accelerate replaces
    or re-seeds those. `set_epoch` takes the Trainer's 0-based epoch loop index, like `DistributedSampler`; the
    trainer sets it itself as well, because on a mid-epoch resume with several processes the Trainer's own
    `set_epoch` does not reach a custom sampler.

    Args:
        dataset_size (`int`): the size of the training set.
        num_samples (`int`): the fixed epoch length, see [`samples_per_epoch`].
        plan_for_epoch (`Callable[[int], EpochPlan]`):
            The [`~hf_zpd.selection.EpochPlan`] of an epoch, by its number (1 for the first epoch).
        seed (`int`, *optional*, defaults to 42): the same on every process.

    Example:

    ```python
    >>> sampler = ZPDSampler(5, 5, plan_for_epoch=lambda epoch: uniform_plan(5, 5, seed=0, epoch=epoch))
    >>> len(sampler), sorted(sampler), list(sampler) == trainer_order(5, 5, seed=0, epoch=1).tolist()
    (5, [0, 1, 2, 3, 4], True)

    ```
    """

    def __init__(
        self,
        dataset_size: int,
        num_samples: int,
        plan_for_epoch: Callable[[int], EpochPlan],
        seed: int = 42,
    ):
        self.dataset_size = dataset_size
        self.num_samples = num_samples
        self.plan_for_epoch = plan_for_epoch
        self.seed = seed
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        """Selects the epoch to draw by the Trainer's 0-based loop index: `set_epoch(0)` draws epoch 1."""
        self.epoch = int(epoch) + 1

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The full draw of `epoch` (by number; the current one by default), before any sharding across processes."""
        epoch = self.epoch if epoch is None else epoch
        plan = self.plan_for_epoch(epoch)
        if plan.counts.shape != (self.dataset_size,) or plan.num_samples != self.num_samples:
            raise RuntimeError(
                f"The plan of epoch {epoch} draws {plan.num_samples} samples over {plan.counts.shape[0]} examples, "
                f"but every epoch has {self.num_samples} over {self.dataset_size}."
            )
        if plan.order is not None:  # a uniform epoch, in the plain Trainer's order
            return plan.order
        return epoch_order(plan.counts, plan.anneal_counts, self.seed, epoch)

    def __iter__(self) -> Iterator[int]:
        yield from self.epoch_indices().tolist()

    def __len__(self) -> int:
        return self.num_samples


def uniform_plan(dataset_size: int, num_samples: int, seed: int, epoch: int) -> EpochPlan:
    """The plan of an epoch drawn without scores: `num_samples` examples in the plain Trainer's order
    ([`trainer_order`]), each at most once."""
    order = trainer_order(dataset_size, num_samples, seed, epoch)
    counts = np.bincount(order, minlength=dataset_size).astype(np.int64)
    empty = np.zeros(0, dtype=np.int64)
    return EpochPlan(counts, np.zeros(dataset_size, dtype=np.int64), empty, empty, empty, order=order)
