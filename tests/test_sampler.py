"""`samples_per_epoch`, `draw_epoch` and `ZPDSampler`, including accelerate's sharding across processes."""

import math
from collections import Counter

import numpy as np
import pytest
from accelerate.data_loader import BatchSamplerShard, prepare_data_loader
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from hf_zpd.sampler import ZPDSampler, draw_epoch, samples_per_epoch

# ----------------------------------------------------------------------------------------------------------------------
# The naive reference
# ----------------------------------------------------------------------------------------------------------------------


def reference_draw(num_samples, dataset_size, zone, replay_fraction, seed, epoch) -> list[int]:
    """The draw written out: whole shuffled passes over the zone, then over the whole set for the replay share
    `round(replay_fraction * num_samples)`, then one shuffle of both, with the same numpy Generator calls in the same
    order (so this pins the random stream a resumed run relies on)."""
    rng = np.random.default_rng([seed, epoch])

    def passes(population, count: int) -> list[int]:
        drawn: list[int] = []
        while len(drawn) < count:
            drawn.extend(rng.permutation(np.asarray(population, dtype=np.int64)).tolist())
        return drawn[:count]

    if zone is None:
        return passes(np.arange(dataset_size), num_samples)
    num_replay = round(replay_fraction * num_samples)
    from_zone = passes(zone, num_samples - num_replay)
    from_replay = passes(np.arange(dataset_size), num_replay)
    return rng.permutation(np.array(from_zone + from_replay, dtype=np.int64)).tolist()


def assert_even_use(draw: list[int], population, count: int):
    """Every member of `population` appears floor or ceil of count / |population| times, and nothing else."""
    counts = Counter(draw)
    assert set(counts) <= set(population)
    low, high = count // len(population), math.ceil(count / len(population))
    assert all(low <= counts.get(member, 0) <= high for member in population), counts


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
# draw_epoch
# ----------------------------------------------------------------------------------------------------------------------

DRAW_CASES = {
    "uniform_whole": (20, 20, None, 0.0),
    "uniform_shorter": (7, 20, None, 0.0),
    "uniform_longer": (50, 20, None, 0.0),
    "zone_1": (13, 20, [4], 0.0),
    "zone_3_cycled": (13, 20, [2, 9, 17], 0.0),
    "zone_larger_than_epoch": (5, 20, list(range(0, 20, 2)), 0.0),
    "replay_half": (13, 20, [4], 0.5),
    "replay_small": (40, 30, [1, 2, 3, 29], 0.1),
    "replay_exceeds_dataset": (50, 7, [0, 6], 0.5),
    "single_example": (3, 1, [0], 0.3),
}


@pytest.mark.parametrize("case", list(DRAW_CASES))
def test_draw_epoch_matches_reference(case):
    num_samples, dataset_size, zone, replay = DRAW_CASES[case]
    zone_array = None if zone is None else np.array(zone)
    for seed, epoch in [(0, 0), (0, 1), (42, 3)]:
        draw = draw_epoch(num_samples, dataset_size, zone_array, replay, seed, epoch)
        assert draw.dtype == np.int64 and draw.shape == (num_samples,)
        assert ((draw >= 0) & (draw < dataset_size)).all()
        assert draw.tolist() == reference_draw(num_samples, dataset_size, zone, replay, seed, epoch)


@pytest.mark.parametrize("num_samples", [1, 20, 33, 60], ids=lambda n: f"n{n}")
def test_uniform_epoch_uses_every_example_evenly(num_samples):
    draw = draw_epoch(num_samples, 20, None, 0.0, seed=1, epoch=0)
    assert_even_use(draw.tolist(), range(20), num_samples)
    if num_samples == 20:
        assert sorted(draw.tolist()) == list(range(20))  # a permutation


@pytest.mark.parametrize(
    ("num_samples", "zone"),
    [(13, [4]), (13, [2, 9, 17]), (12, [2, 9, 17]), (5, list(range(0, 20, 2))), (31, [0, 19, 7, 5, 11])],
    ids=["zone1", "zone3_uneven", "zone3_even", "zone_larger", "zone5_unsorted"],
)
def test_zone_is_cycled_evenly_without_replay(num_samples, zone):
    draw = draw_epoch(num_samples, 20, np.array(zone), 0.0, seed=3, epoch=2)
    assert len(draw) == num_samples
    assert_even_use(draw.tolist(), zone, num_samples)


@pytest.mark.parametrize(
    ("dataset_size", "num_samples", "replay", "zone"),
    [(10, 40, 0.5, [3]), (8, 32, 0.25, [1, 5, 6]), (5, 20, 0.5, [0, 4]), (6, 12, 0.5, [0, 1, 2, 3, 4, 5])],
    ids=["zone1_two_passes", "zone3_one_pass", "zone2_two_passes", "zone_is_everything"],
)
def test_replay_share_is_exact(dataset_size, num_samples, replay, zone):
    """When the replay share is whole passes over the set and the zone share whole passes over the zone, each
    example's count is known exactly: replay passes, plus zone passes for zone members."""
    num_replay = round(replay * num_samples)
    assert num_replay % dataset_size == 0 and (num_samples - num_replay) % len(zone) == 0
    counts = Counter(draw_epoch(num_samples, dataset_size, np.array(zone), replay, seed=7, epoch=1).tolist())
    for index in range(dataset_size):
        expected = num_replay // dataset_size + ((num_samples - num_replay) // len(zone) if index in zone else 0)
        assert counts[index] == expected, (index, counts)


def test_replay_share_rounds_half_to_even():
    """round(0.5 * 5) = 2 (Python rounds half to even): a zone of one example gets 3 of 5 draws, plus any replay
    draw that happens to hit it."""
    for epoch in range(20):
        draw = draw_epoch(5, 100, np.array([50]), 0.5, seed=0, epoch=epoch).tolist()
        assert draw == reference_draw(5, 100, [50], 0.5, 0, epoch)
        assert 3 <= draw.count(50) <= 5
        assert len([i for i in draw if i != 50]) <= 2


def test_draw_is_deterministic_and_differs_across_epochs_seeds_and_zones():
    zone = np.arange(10, 60)
    first = draw_epoch(100, 100, zone, 0.2, seed=5, epoch=3)
    np.testing.assert_array_equal(first, draw_epoch(100, 100, zone.copy(), 0.2, seed=5, epoch=3))
    assert not np.array_equal(first, draw_epoch(100, 100, zone, 0.2, seed=5, epoch=4))
    assert not np.array_equal(first, draw_epoch(100, 100, zone, 0.2, seed=6, epoch=3))
    assert not np.array_equal(first, draw_epoch(100, 100, np.arange(11, 61), 0.2, seed=5, epoch=3))
    # Epoch 0 is a different permutation for a different seed, and the same one for the same seed.
    np.testing.assert_array_equal(draw_epoch(100, 100, None, 0.0, 1, 0), draw_epoch(100, 100, None, 0.0, 1, 0))
    assert not np.array_equal(draw_epoch(100, 100, None, 0.0, 1, 0), draw_epoch(100, 100, None, 0.0, 2, 0))


def test_empty_zone_raises():
    with pytest.raises(ValueError, match="empty zone"):
        draw_epoch(10, 20, np.array([], dtype=np.int64), 0.0, seed=0, epoch=1)
    with pytest.raises(ValueError, match="empty zone"):
        draw_epoch(10, 20, np.array([], dtype=np.int64), 0.5, seed=0, epoch=1)


def test_empty_zone_is_allowed_when_the_whole_epoch_is_replay():
    # round(0.6 * 1) = 1: the one sample of the epoch is replay, so no zone member is needed.
    draw = draw_epoch(1, 20, np.array([], dtype=np.int64), 0.6, seed=0, epoch=1)
    assert draw.tolist() == reference_draw(1, 20, [], 0.6, 0, 1)


def test_draw_from_empty_dataset_raises_value_error():
    with pytest.raises(ValueError, match="empty"):
        draw_epoch(1, 0, None, 0.0, seed=0, epoch=0)


# ----------------------------------------------------------------------------------------------------------------------
# ZPDSampler
# ----------------------------------------------------------------------------------------------------------------------

ZONES_BY_EPOCH = {0: None, 1: np.array([3]), 2: np.array([0, 5, 9, 11]), 3: np.arange(2, 40, 3), 4: np.arange(50)}


def make_sampler(dataset_size=50, num_samples=37, replay_fraction=0.0, seed=42, zones=None):
    zones = ZONES_BY_EPOCH if zones is None else zones
    return ZPDSampler(dataset_size, num_samples, lambda epoch: zones.get(epoch), replay_fraction, seed)


@pytest.mark.parametrize("replay", [0.0, 0.3], ids=["no_replay", "replay0.3"])
def test_every_epoch_has_the_announced_length(replay):
    sampler = make_sampler(replay_fraction=replay)
    for epoch, zone in ZONES_BY_EPOCH.items():
        sampler.set_epoch(epoch)
        draw = list(sampler)
        assert len(sampler) == len(draw) == 37
        assert all(0 <= i < 50 for i in draw)
        if zone is not None and replay == 0.0:
            assert_even_use(draw, zone.tolist(), 37)
        assert draw == sampler.epoch_indices().tolist() == sampler.epoch_indices(epoch).tolist()
        assert draw == reference_draw(37, 50, None if zone is None else zone.tolist(), replay, 42, epoch)


def test_sampler_epoch_zero_is_a_permutation():
    sampler = make_sampler(num_samples=50)
    assert sorted(sampler) == list(range(50))


def test_sampler_is_a_pure_function_of_seed_epoch_and_zone():
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
    sampler = make_sampler(replay_fraction=0.2)
    for epoch in (0, 2, 3):
        sampler.set_epoch(epoch)
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
    fraction = draw(st.sampled_from([0.1, 0.33, 0.5, 1.0]))
    num_samples = samples_per_epoch(dataset_size, fraction)
    zone = draw(st.one_of(st.none(), st.sets(st.integers(0, dataset_size - 1), min_size=1)))
    replay = draw(st.sampled_from([0.0, 0.0, 0.1, 0.5, 0.9]))
    world_size = draw(st.integers(min_value=1, max_value=8))
    batch_size = draw(st.integers(min_value=1, max_value=5))
    seed = draw(st.integers(min_value=0, max_value=2**32 - 1))
    epoch = draw(st.integers(min_value=0, max_value=5))
    zone = None if zone is None else sorted(zone)
    return dataset_size, num_samples, zone, replay, world_size, batch_size, seed, epoch


@settings(max_examples=200, deadline=None)
@given(sharding_problems())
def test_sampler_properties(problem):
    dataset_size, num_samples, zone, replay, world_size, batch_size, seed, epoch = problem
    zone_array = None if zone is None else np.array(zone)
    sampler = ZPDSampler(dataset_size, num_samples, lambda e: zone_array, replay, seed)
    sampler.set_epoch(epoch)
    draw = list(sampler)
    assert len(draw) == len(sampler) == num_samples
    assert all(0 <= i < dataset_size for i in draw)
    assert draw == reference_draw(num_samples, dataset_size, zone, replay, seed, epoch)
    if zone is None:
        assert_even_use(draw, range(dataset_size), num_samples)
    elif replay == 0.0:
        assert_even_use(draw, zone, num_samples)
    assert_sharded_like_accelerate(sampler, batch_size, world_size)


def test_sharded_draws_hold_the_zone():
    """A concrete instance: 4 processes, batches of 3, a zone of 5 and no replay. 50 draws make 17 batches, padded
    to 20 (5 steps of 4 processes), and every rank trains only on zone members."""
    zone = np.array([7, 13, 21, 22, 40])
    sampler = ZPDSampler(50, 50, lambda epoch: zone, seed=1)
    shards = shard_batches(sampler, 3, 4, even_batches=True)
    assert [len(batches) for batches in shards] == [5, 5, 5, 5]
    for batches in shards:
        assert {i for batch in batches for i in batch} <= set(zone.tolist())
    counts = Counter(interleave(shards)[:50])
    assert sorted(counts.values()) == [10, 10, 10, 10, 10]
