"""`samples_per_epoch`, `epoch_order` and `ZPDSampler`, including accelerate's sharding across processes."""

import math
from collections import Counter

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard, prepare_data_loader
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from hf_zpd.sampler import ZPDSampler, epoch_order, samples_per_epoch, trainer_order, uniform_plan
from hf_zpd.selection import EpochPlan

# ----------------------------------------------------------------------------------------------------------------------
# The naive reference
# ----------------------------------------------------------------------------------------------------------------------


def reference_order(counts, anneal_counts, seed, epoch) -> list[int]:
    """The order written out: each example repeated by its composed count, shuffled; then each repeated by its
    annealing count, shuffled; with the same numpy Generator calls in the same order (this pins the random stream a
    resumed run relies on)."""
    rng = np.random.default_rng([seed, epoch, 0])
    composed, annealed = [], []
    for index, (count, anneal) in enumerate(zip(counts, anneal_counts, strict=True)):
        composed += [index] * (count - anneal)
        annealed += [index] * anneal
    first = rng.permutation(np.array(composed, dtype=np.int64)).tolist()
    return first + rng.permutation(np.array(annealed, dtype=np.int64)).tolist()


def plan(counts, anneal=None) -> EpochPlan:
    counts = np.asarray(counts, dtype=np.int64)
    anneal = np.zeros_like(counts) if anneal is None else np.asarray(anneal, dtype=np.int64)
    empty = np.zeros(0, dtype=np.int64)
    return EpochPlan(counts, anneal, empty, empty, empty)


# ----------------------------------------------------------------------------------------------------------------------
# samples_per_epoch
# ----------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset_size", "fraction", "expected"),
    [(10, 1.0, 10), (10, 0.5, 5), (10, 0.25, 3), (1, 0.01, 1), (1000, 0.001, 1), (7, 0.999, 7), (1, 1.0, 1)],
    ids=["whole", "half", "ceil", "at_least_one", "tiny_fraction", "almost_whole", "single_example"],
)
def test_samples_per_epoch(dataset_size, fraction, expected):
    assert samples_per_epoch(dataset_size, fraction) == expected


@pytest.mark.parametrize("dataset_size", [0, -1])
def test_samples_per_epoch_of_empty_dataset_raises(dataset_size):
    with pytest.raises(ValueError, match="empty"):
        samples_per_epoch(dataset_size)


@pytest.mark.parametrize(
    ("dataset_size", "fraction", "expected"), [(100, 0.07, 7), (100, 0.55, 55)], ids=["0.07x100", "0.55x100"]
)
def test_samples_per_epoch_of_a_decimal_fraction_is_exact(dataset_size, fraction, expected):
    assert samples_per_epoch(dataset_size, fraction) == expected


# ----------------------------------------------------------------------------------------------------------------------
# epoch_order
# ----------------------------------------------------------------------------------------------------------------------

ORDER_CASES = {
    "permutation": ([1] * 10, None),
    "repeats": ([0, 3, 1, 0, 2], None),
    "anneal_tail": ([2, 1, 1, 0, 3], [1, 0, 1, 0, 1]),
    "all_anneal": ([1, 2, 0], [1, 2, 0]),
    "single": ([0, 0, 1], None),
}


@pytest.mark.parametrize("case", list(ORDER_CASES))
def test_epoch_order_matches_reference(case):
    counts, anneal = ORDER_CASES[case]
    anneal = [0] * len(counts) if anneal is None else anneal
    for seed, epoch in [(0, 1), (0, 2), (42, 3)]:
        order = epoch_order(np.array(counts), np.array(anneal), seed, epoch)
        assert order.dtype == np.int64 and order.shape == (sum(counts),)
        assert order.tolist() == reference_order(counts, anneal, seed, epoch)
        assert Counter(order.tolist()) == Counter({i: c for i, c in enumerate(counts) if c})
        tail = sum(anneal)
        if tail:  # the annealing draws come last
            assert Counter(order[-tail:].tolist()) == Counter({i: a for i, a in enumerate(anneal) if a})


def test_epoch_order_refuses_inconsistent_counts():
    with pytest.raises(ValueError, match="non-negative"):
        epoch_order(np.array([1, -1]), np.array([0, 0]), 0, 1)
    with pytest.raises(ValueError, match="part of them"):
        epoch_order(np.array([1, 1]), np.array([2, 0]), 0, 1)


# ----------------------------------------------------------------------------------------------------------------------
# ZPDSampler
# ----------------------------------------------------------------------------------------------------------------------


def counts_for(epoch: int, dataset_size: int = 50, num_samples: int = 37) -> np.ndarray:
    """A different, fixed draw for each epoch: epoch 1 every example at most once, later epochs with repeats."""
    rng = np.random.default_rng(epoch)
    if epoch == 1:
        counts = np.zeros(dataset_size, dtype=np.int64)
        counts[rng.choice(dataset_size, size=num_samples, replace=False)] = 1
        return counts
    picks = rng.choice(min(dataset_size, 10 * epoch), size=num_samples)
    return np.bincount(picks, minlength=dataset_size).astype(np.int64)


def make_sampler(dataset_size=50, num_samples=37, seed=42):
    return ZPDSampler(
        dataset_size, num_samples, lambda epoch: plan(counts_for(epoch, dataset_size, num_samples)), seed
    )


def test_every_epoch_has_the_announced_length():
    sampler = make_sampler()
    for index in range(4):
        sampler.set_epoch(index)  # the Trainer's 0-based loop index
        draw = list(sampler)
        assert len(sampler) == len(draw) == 37
        assert draw == sampler.epoch_indices().tolist() == sampler.epoch_indices(index + 1).tolist()
        counts = counts_for(index + 1)
        assert draw == reference_order(counts, np.zeros_like(counts), 42, index + 1)


def test_a_plan_of_another_length_is_refused():
    sampler = ZPDSampler(10, 10, lambda epoch: plan([2] * 10), seed=0)
    with pytest.raises(RuntimeError, match="every epoch has 10"):
        list(sampler)


def test_sampler_is_a_pure_function_of_seed_epoch_and_counts():
    a, b = make_sampler(seed=9), make_sampler(seed=9)
    b.set_epoch(3)
    b.set_epoch(2)  # the path to an epoch does not matter, as on resume
    a.set_epoch(2)
    assert list(a) == list(a) == list(b)
    other_seed = make_sampler(seed=10)
    other_seed.set_epoch(2)
    assert list(a) != list(other_seed)
    a.set_epoch(3)
    assert list(a) != list(b)


def test_sampler_is_not_replaced_or_reseeded_by_accelerate():
    sampler = make_sampler()
    assert not hasattr(sampler, "generator")
    assert not isinstance(sampler, RandomSampler)


# ----------------------------------------------------------------------------------------------------------------------
# Sharding across processes, as accelerate does it
# ----------------------------------------------------------------------------------------------------------------------


def shard_batches(sampler, batch_size: int, world_size: int, even_batches: bool) -> list[list[list[int]]]:
    """Each rank's batches, as `accelerate.data_loader.prepare_data_loader` makes them for the Trainer: the plain
    batch sampler for one process, a `BatchSamplerShard` (no split) per rank for several."""
    batch_sampler = BatchSampler(sampler, batch_size, drop_last=False)
    if world_size == 1:
        return [[list(batch) for batch in batch_sampler]]
    shards = []
    for rank in range(world_size):
        shard = BatchSamplerShard(batch_sampler, world_size, rank, split_batches=False, even_batches=even_batches)
        batches = [list(batch) for batch in shard]
        assert len(batches) == len(shard), "the Trainer sizes max_steps from len(dataloader)"
        shards.append(batches)
    return shards


def interleave(shards: list[list[list[int]]]) -> list[int]:
    """Global order: step k is rank 0's k-th batch, then rank 1's, ... (how BatchSamplerShard deals batches)."""
    order = []
    for step in range(max(len(batches) for batches in shards)):
        for batches in shards:
            if step < len(batches):
                order.extend(batches[step])
    return order


def assert_sharded_like_accelerate(sampler, batch_size: int, world_size: int):
    """accelerate with several processes (even_batches=True, the default): every rank gets the same number of full batches, the ranks'
    batches are disjoint positions of the global draw, and the draw is padded by looping back to its beginning
    ("loop with indices from the beginning") up to a round number of global batches. With even_batches=False the
    ranks' batches partition the draw exactly."""
    draw = sampler.epoch_indices()
    num_batches = math.ceil(len(draw) / batch_size)
    if world_size == 1:  # accelerate does not wrap the batch sampler: the draw itself, last batch possibly short
        (batches,) = shard_batches(sampler, batch_size, 1, even_batches=True)
        assert batches == [draw[start : start + batch_size].tolist() for start in range(0, len(draw), batch_size)]
        assert len(batches) == num_batches
        return

    shards = shard_batches(sampler, batch_size, world_size, even_batches=True)
    steps = math.ceil(num_batches / world_size)
    assert all(len(batches) == steps for batches in shards)
    assert all(len(batch) == batch_size for batches in shards for batch in batches)
    padded_length = steps * world_size * batch_size
    assert len(draw) <= padded_length < len(draw) + world_size * batch_size
    assert interleave(shards) == np.resize(draw, padded_length).tolist()

    uneven = shard_batches(sampler, batch_size, world_size, even_batches=False)
    assert interleave(uneven) == draw.tolist()


@pytest.mark.parametrize("batch_size", [1, 3, 4], ids=lambda b: f"bs{b}")
@pytest.mark.parametrize("world_size", range(1, 9), ids=lambda w: f"world{w}")
def test_sharding_over_processes(world_size, batch_size):
    sampler = make_sampler()
    for index in (0, 2, 3):
        sampler.set_epoch(index)
        assert_sharded_like_accelerate(sampler, batch_size, world_size)


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_prepare_data_loader_keeps_the_sampler(world_size):
    """Through accelerate's own `prepare_data_loader` (as the Trainer calls it, with its seedable-sampler option),
    the ZPDSampler survives unchanged and the ranks' batches are the sharded draw."""
    sampler = make_sampler(dataset_size=50, num_samples=37)
    sampler.set_epoch(2)
    loader = DataLoader(list(range(50)), batch_size=4, sampler=sampler)
    rank_batches = []
    for rank in range(world_size):
        prepared = prepare_data_loader(
            loader, num_processes=world_size, process_index=rank, put_on_device=False, use_seedable_sampler=True
        )
        batch_sampler = prepared.batch_sampler
        if world_size > 1:
            assert isinstance(batch_sampler, BatchSamplerShard)
            batch_sampler = batch_sampler.batch_sampler
        assert batch_sampler.sampler is sampler
        rank_batches.append([batch.tolist() for batch in prepared])
    assert rank_batches == shard_batches(sampler, 4, world_size, even_batches=True)


@st.composite
def sharding_problems(draw):
    dataset_size = draw(st.integers(min_value=1, max_value=60))
    fraction = draw(st.sampled_from([0.1, 0.33, 0.5, 1.0, 1.7]))
    num_samples = samples_per_epoch(dataset_size, fraction)
    picks = draw(st.lists(st.integers(0, dataset_size - 1), min_size=num_samples, max_size=num_samples))
    num_anneal = draw(st.integers(0, num_samples))
    world_size = draw(st.integers(min_value=1, max_value=8))
    batch_size = draw(st.integers(min_value=1, max_value=5))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    epoch = draw(st.integers(min_value=1, max_value=6))
    counts = np.bincount(picks, minlength=dataset_size).astype(np.int64)
    anneal = np.bincount(picks[:num_anneal], minlength=dataset_size).astype(np.int64)
    return dataset_size, num_samples, counts, anneal, world_size, batch_size, seed, epoch


@settings(max_examples=200, deadline=None)
@given(sharding_problems())
def test_sampler_properties(problem):
    dataset_size, num_samples, counts, anneal, world_size, batch_size, seed, epoch = problem
    sampler = ZPDSampler(dataset_size, num_samples, lambda e: plan(counts, anneal), seed)
    sampler.set_epoch(epoch - 1)
    draw = list(sampler)
    assert len(draw) == len(sampler) == num_samples
    assert all(0 <= i < dataset_size for i in draw)
    assert draw == reference_order(counts, anneal, seed, epoch)
    assert_sharded_like_accelerate(sampler, batch_size, world_size)


def test_sharded_draws_hold_the_zone():
    """A concrete instance: 4 processes, batches of 3, and an epoch that draws 5 examples 10 times each. 50 draws make
    17 batches, padded to 20 (5 steps of 4 processes), and every rank trains only on those examples."""
    zone = np.array([7, 13, 21, 22, 40])
    counts = np.zeros(50, dtype=np.int64)
    counts[zone] = 10
    sampler = ZPDSampler(50, 50, lambda epoch: plan(counts), seed=1)
    shards = shard_batches(sampler, 3, 4, even_batches=True)
    assert [len(batches) for batches in shards] == [5, 5, 5, 5]
    for batches in shards:
        assert {i for batch in batches for i in batch} <= set(zone.tolist())
    counts_seen = Counter(interleave(shards)[:50])
    assert sorted(counts_seen.values()) == [10, 10, 10, 10, 10]


# ----------------------------------------------------------------------------------------------------------------------
# Uniform epochs: the plain Trainer's order
# ----------------------------------------------------------------------------------------------------------------------


def accelerate_trainer_orders(size: int, data_seed: int, epochs: int) -> list[list[int]]:
    """What the plain Trainer's training loader yields per epoch: `RandomSampler`, prepared by accelerate with the
    Trainer's default `use_seedable_sampler=True`, its epoch set before each pass as `Trainer._run_epoch` does."""
    loader = prepare_data_loader(
        DataLoader(list(range(size)), sampler=RandomSampler(list(range(size))), batch_size=1),
        use_seedable_sampler=True,
        data_seed=data_seed,
        put_on_device=False,
    )
    orders = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        orders.append([int(batch) for batch in loader])
    return orders


@pytest.mark.parametrize(("size", "seed"), [(1, 0), (7, 42), (64, 3), (257, 12345)])
def test_trainer_order_is_what_accelerate_prepares_for_the_trainer(size, seed):
    for epoch, order in enumerate(accelerate_trainer_orders(size, seed, epochs=3), start=1):
        assert trainer_order(size, size, seed, epoch).tolist() == order


def test_uniform_plan_draws_each_example_at_most_once_in_the_trainer_order():
    plan = uniform_plan(10, 10, seed=5, epoch=2)
    assert plan.counts.tolist() == [1] * 10 and plan.order.tolist() == trainer_order(10, 10, 5, 2).tolist()
    short = uniform_plan(10, 4, seed=5, epoch=2)  # epoch_fraction < 1: the first 4 of the same permutation
    assert short.order.tolist() == plan.order[:4].tolist() and short.counts.sum() == 4
    assert np.array_equal(np.flatnonzero(short.counts), np.sort(short.order))
    sampler = ZPDSampler(10, 4, plan_for_epoch=lambda epoch: uniform_plan(10, 4, seed=5, epoch=epoch))
    sampler.set_epoch(1)
    assert list(sampler) == short.order.tolist()
