"""The epoch draw: a fixed number of samples per epoch, taken from the zone plus a replay share of the whole set.

Pure numpy and `torch.utils.data.Sampler`, no `transformers` import. The draw is a pure function of
(seed, epoch, zone), so every process computes the same global order (accelerate then gives each process a
disjoint share of its batches), and a resumed run draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
from torch.utils.data import Sampler


def samples_per_epoch(dataset_size: int, epoch_fraction: float = 1.0) -> int:
    """`ceil(dataset_size * epoch_fraction)`, at least 1: the fixed length of every epoch."""
    if dataset_size < 1:
        raise ValueError("The training dataset is empty: there is nothing to draw an epoch from.")
    return max(1, exact_ceil(dataset_size * epoch_fraction))


def exact_ceil(value: float) -> int:
    """`ceil` that ignores floating-point noise: 100 * 0.07 is 7.000000000000001, and means 7."""
    return math.ceil(round(value, 9))


def _cycle_permutations(population: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` items from `population`: whole shuffled passes, then part of one more.

    Every item appears either floor(count / n) or ceil(count / n) times, which is the most even use of a zone
    that is smaller than the epoch.
    """
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    passes = [rng.permutation(population) for _ in range(math.ceil(count / population.size))]
    return np.concatenate(passes)[:count].astype(np.int64)


def draw_epoch(
    num_samples: int,
    dataset_size: int,
    zone: np.ndarray | None,
    replay_fraction: float,
    seed: int,
    epoch: int,
) -> np.ndarray:
    """Draws one epoch's order of dataset indices.

    Without a zone (epoch 0, before any score exists) the epoch is drawn uniformly from the whole set. With a zone,
    `round(replay_fraction * num_samples)` samples come from the whole set and the rest from the zone; the two parts
    are then shuffled together.

    Args:
        num_samples (`int`): the epoch's length, the same for every epoch.
        dataset_size (`int`): the size of the training set.
        zone (`np.ndarray` of int, *optional*): the dataset indices in the zone, non-empty.
        replay_fraction (`float`): share of the epoch drawn from the whole set, in [0, 1).
        seed (`int`), epoch (`int`): the draw is a pure function of these and of the zone.

    Returns:
        `np.ndarray` of int64 and shape `(num_samples,)`.

    Example:

    ```python
    >>> import numpy as np
    >>> order = draw_epoch(6, dataset_size=10, zone=np.array([2, 5]), replay_fraction=0.0, seed=0, epoch=1)
    >>> sorted(order.tolist())
    [2, 2, 2, 5, 5, 5]

    ```
    """
    if dataset_size < 1:
        raise ValueError("The training dataset is empty: there is nothing to draw an epoch from.")
    rng = np.random.default_rng([seed, epoch])
    everything = np.arange(dataset_size, dtype=np.int64)
    if zone is None:
        return _cycle_permutations(everything, num_samples, rng)
    zone = np.asarray(zone, dtype=np.int64)
    num_replay = int(round(replay_fraction * num_samples))
    num_zone = num_samples - num_replay
    if num_zone > 0 and zone.size == 0:
        raise ValueError("Cannot draw from an empty zone: the band selection must hold at least one example.")
    from_zone = _cycle_permutations(zone, num_zone, rng)
    from_replay = _cycle_permutations(everything, num_replay, rng)
    return rng.permutation(np.concatenate([from_zone, from_replay]))


class ZPDSampler(Sampler[int]):
    """Yields each epoch's draw from the ZPD; its length never changes between epochs.

    The Trainer reads `len(train_dataloader)` once, before training, to set `max_steps` and the learning-rate
    schedule, so a sampler whose length varied would silently end training early or skip batches.

    On purpose the sampler has no `generator` attribute and does not subclass `RandomSampler`: accelerate replaces
    or re-seeds those. The trainer sets the epoch itself (see `set_epoch`), because on a mid-epoch resume with
    several processes the Trainer's own `set_epoch` does not reach a custom sampler.

    Args:
        dataset_size (`int`): the size of the training set.
        num_samples (`int`): the fixed epoch length, see [`samples_per_epoch`].
        zone_for_epoch (`Callable[[int], np.ndarray | None]`):
            Returns the zone (dataset indices) an epoch draws from, or `None` to draw uniformly.
        replay_fraction (`float`, *optional*, defaults to 0.0): see [`draw_epoch`].
        seed (`int`, *optional*, defaults to 42): the same on every process.

    Example:

    ```python
    >>> import numpy as np
    >>> sampler = ZPDSampler(5, 5, zone_for_epoch=lambda epoch: None if epoch == 0 else np.array([1, 3]))
    >>> len(sampler), sorted(sampler)
    (5, [0, 1, 2, 3, 4])
    >>> sampler.set_epoch(1)
    >>> len(sampler), sorted(set(sampler))  # 5 draws from a zone of 2: each example 2 or 3 times
    (5, [1, 3])

    ```
    """

    def __init__(
        self,
        dataset_size: int,
        num_samples: int,
        zone_for_epoch: Callable[[int], np.ndarray | None],
        replay_fraction: float = 0.0,
        seed: int = 42,
    ):
        self.dataset_size = dataset_size
        self.num_samples = num_samples
        self.zone_for_epoch = zone_for_epoch
        self.replay_fraction = replay_fraction
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_indices(self, epoch: int | None = None) -> np.ndarray:
        """The full draw of `epoch` (the current one by default), before any sharding across processes."""
        epoch = self.epoch if epoch is None else epoch
        return draw_epoch(
            self.num_samples, self.dataset_size, self.zone_for_epoch(epoch), self.replay_fraction, self.seed, epoch
        )

    def __iter__(self) -> Iterator[int]:
        yield from self.epoch_indices().tolist()

    def __len__(self) -> int:
        return self.num_samples
