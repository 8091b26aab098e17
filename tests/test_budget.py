"""`hf_zpd.budget`: every epoch's length, the pruned draws and the scoring pool, from the set and the budget."""

import math

import pytest

from hf_zpd.budget import AUTO_EPOCHS, epoch_sizes


def reference(size, batch, world, accumulation, max_steps, epochs, fraction, prune, pool):
    """The rules of the module docstring, written out."""
    steps_per_pass = max(math.ceil(math.ceil(math.ceil(size / batch) / world) / accumulation), 1)
    budget = max_steps if max_steps > 0 else math.ceil(epochs * steps_per_pass)
    chosen = fraction is None and AUTO_EPOCHS <= budget < steps_per_pass
    if fraction is None:
        fraction = min(1.0, math.ceil(budget / AUTO_EPOCHS) * batch * world * accumulation / size) if chosen else 1.0
    unpruned = max(1, math.ceil(round(size * fraction, 9)))
    pruned = min(math.floor(unpruned * prune / 2), unpruned - 1)
    if pool is None and fraction < 1:
        pool = min(size, 2 * (unpruned - pruned))
    return fraction, unpruned - pruned, pruned, pool, budget if chosen and max_steps <= 0 else None, chosen


CASES = [
    # (size, batch, world, accumulation, max_steps, num_train_epochs, epoch_fraction, prune_fraction, pool)
    (6400, 16, 1, 1, 128, 3, None, 0.0, None),  # a budget of 128 steps over 400 a pass: 4 epochs of 32 steps
    (6400, 16, 1, 1, -1, 0.5, None, 0.0, None),  # num_train_epochs under 1: kept as 200 steps
    (6400, 16, 1, 1, -1, 1, None, 0.0, None),  # one pass: the Trainer's epochs
    (6400, 16, 1, 1, -1, 3, None, 0.5, None),  # pruning: 6400 - 1600 samples an epoch
    (100, 8, 2, 2, 3, 1, None, 0.0, None),  # a budget under AUTO_EPOCHS steps: whole passes
    (96, 8, 1, 1, 8, 1, None, 0.0, 40),  # a pool set by hand is kept
    (48, 8, 1, 1, -1, 3, 0.5, 0.3, None),  # an epoch fraction set by hand, pruned
    (7, 3, 2, 1, -1, 0.5, None, 0.9, None),
]


@pytest.mark.parametrize("case", CASES)
def test_epoch_sizes_follow_the_rules(case):
    sizes = epoch_sizes(*case)
    fraction, num_samples, pruned, pool, budget_steps, chosen = reference(*case)
    assert sizes.epoch_fraction == pytest.approx(fraction)
    assert (sizes.num_samples, sizes.prune_draws, sizes.scoring_pool_size) == (num_samples, pruned, pool)
    assert (sizes.budget_steps, sizes.chosen) == (budget_steps, chosen)


def test_the_main_cases_in_numbers():
    budget = epoch_sizes(6400, 16, 1, 1, 128, 3, None)
    assert (budget.num_samples, budget.scoring_pool_size, budget.budget_steps, budget.chosen) == (
        512,
        1024,
        None,
        True,
    )
    half = epoch_sizes(6400, 16, 1, 1, -1, 0.5, None)
    assert (half.num_samples, half.budget_steps) == (800, 200)  # 4 epochs of 50 steps, the 200 steps kept
    whole = epoch_sizes(6400, 16, 1, 1, -1, 1, None)
    assert (whole.num_samples, whole.scoring_pool_size, whole.chosen) == (6400, None, False)
    pruned = epoch_sizes(6400, 16, 1, 1, -1, 3, None, prune_fraction=0.5)
    assert (pruned.num_samples, pruned.prune_draws) == (4800, 1600)
