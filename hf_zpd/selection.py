"""The epoch composition: how the zone of proximal development becomes an epoch's draw counts.

Pure numpy, no `transformers` import. The zone (band.py) says which examples matter most now; the composition says
how many times each training example is drawn in the epoch (README, "How the zone becomes an epoch"). For an
epoch of N samples, [`compose_epoch`] returns one count per training example, summing to exactly N:

    zone draws   each zone example is drawn up to k = `zone_repeats` times (as evenly as the epoch allows);
    fill         the rest of the epoch comes from outside the zone: nearest to the band first (in log-difficulty),
                 or sampled with weight exp(-distance / fill_temperature), or uniformly ("replay"), each example
                 once before any is drawn twice; so the examples an epoch skips are the farthest from the model's
                 level: the mastered ones below the band and the out-of-reach ones above it;
    class balance  (classification) the level D, the band and the minimum zone are worked out per class, and each
                 class gets its share of the pool's examples as its share of the epoch;
    guard        examples the learnability guard marks out of reach ([`update_out_of_reach`]) never enter the zone
                 and come last in the fill order;
    anneal       the last `anneal_fraction` of all training samples is drawn uniformly (the trainer says how many of
                 this epoch's samples fall there), placed at the end of the epoch by the sampler.

The composition `"zone_only"` is the seed's literal rule (every sample of the epoch cycles through the zone, with an
optional uniform `replay_fraction`); it ignores the parts above. `"easy_first"` is the pacing of Wu, Dyer and
Neyshabur (ICLR 2021): the epoch cycles through the easiest `easy_fraction` of each class (a training set that grows
as the caller raises the fraction), with class balance and annealing.

Out-of-reach flags come in two strengths: the learnability guard's put an example last in the fill
(`exclude_out_of_reach=False`); the high-loss and reference rules' leave it out of the zone, the fill, the replay and
the annealing draws (`exclude_out_of_reach=True`), so that a likely mislabelled example is not trained on while it is
flagged. [`high_loss_flags`] is the small-loss criterion of Co-teaching and of DivideMix's loss mixture.

With N equal to the pool and k = 1, "zone first, then fill" draws every example once, which is uniform sampling: the
curriculum acts through repeats (k > 1) or through a smaller epoch (an epoch fraction below 1).

Every draw is a pure function of (scores, labels, out-of-reach flags, seed, epoch), so processes agree and a resumed
run draws exactly what the uninterrupted run drew. No example outside `[0, dataset_size)` is ever drawn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .band import band_around_level, distance_to_band, minimum_zone_size, select_zone

COMPOSITIONS = ("zone_and_fill", "zone_only", "easy_first")
FILL_RULES = ("nearest", "weighted", "uniform")
OUT_OF_REACH_FILL_PLACES = ("last", "anywhere")

# Tags that give each random choice of an epoch its own stream, so that changing one part never shifts another.
_ZONE_EXTRAS, _FILL, _REPLAY, _ANNEAL, _PRUNE = 1, 2, 3, 4, 6


@dataclass(frozen=True)
class CompositionPolicy:
    """How an epoch is composed from the pool's scores; see the module docstring.

    Args:
        composition (`str`, *optional*, defaults to `"zone_and_fill"`):
            `"zone_and_fill"` (zone repeats, fill, class balance, guard, anneal) or `"zone_only"` (the seed's literal
            rule: the whole epoch cycles through the zone).
        band_lower (`float`, *optional*, defaults to 1.1), band_upper (`float`, *optional*, defaults to 1.3):
            The band's edges relative to the level D.
        min_zone_fraction (`float`, *optional*, defaults to 0.05):
            The smallest zone as a fraction of the pool (of each class's pool with class balance).
        global_batch_size (`int`, *optional*, defaults to 1):
            The zone is never smaller than one global batch (its class share of one, with class balance).
        zone_repeats (`int`, *optional*, defaults to 2):
            k: the most times one zone example is drawn in an epoch.
        fill (`str`, *optional*, defaults to `"nearest"`):
            `"nearest"`, `"weighted"` or `"uniform"`.
        fill_temperature (`float`, *optional*, defaults to 0.25):
            The temperature of the `"weighted"` fill, in log-difficulty.
        class_balance (`bool`, *optional*, defaults to `True`):
            Band and epoch shares per class (when class labels are given).
        replay_fraction (`float`, *optional*, defaults to 0.0):
            Share of each zone epoch drawn uniformly from the whole training set, whatever the composition.
        exclude_out_of_reach (`bool`, *optional*, defaults to `False`):
            Out-of-reach examples leave the zone, the fill, replay and annealing (else: out of the zone, and where
            `out_of_reach_in_fill` says in the fill).
        out_of_reach_in_fill (`str`, *optional*, defaults to `"last"`):
            Where the fill draws out-of-reach examples that are not excluded: `"last"` (after every other candidate,
            so a shortened epoch skips them first) or `"anywhere"` (ranked by the fill rule like any other candidate:
            they only stay out of the zone).
        easy_fraction (`float`, *optional*, defaults to 1.0):
            For `"easy_first"`: the share of each class, easiest first, that the epoch cycles through.
    """

    composition: str = "zone_and_fill"
    band_lower: float = 1.1
    band_upper: float = 1.3
    min_zone_fraction: float = 0.05
    global_batch_size: int = 1
    zone_repeats: int = 2
    fill: str = "nearest"
    fill_temperature: float = 0.25
    class_balance: bool = True
    replay_fraction: float = 0.0
    exclude_out_of_reach: bool = False
    out_of_reach_in_fill: str = "last"
    easy_fraction: float = 1.0

    def __post_init__(self):
        if self.composition not in COMPOSITIONS:
            raise ValueError(f"composition must be one of {COMPOSITIONS}, got {self.composition!r}.")
        if self.fill not in FILL_RULES:
            raise ValueError(f"fill must be one of {FILL_RULES}, got {self.fill!r}.")
        if self.out_of_reach_in_fill not in OUT_OF_REACH_FILL_PLACES:
            raise ValueError(
                f"out_of_reach_in_fill must be one of {OUT_OF_REACH_FILL_PLACES}, got {self.out_of_reach_in_fill!r}."
            )
        if self.zone_repeats < 1:
            raise ValueError(f"zone_repeats must be at least 1, got {self.zone_repeats}.")
        if not (math.isfinite(self.fill_temperature) and self.fill_temperature > 0):
            raise ValueError(f"fill_temperature must be a positive number, got {self.fill_temperature}.")
        if not 0 < self.easy_fraction <= 1:
            raise ValueError(f"easy_fraction must be in (0, 1], got {self.easy_fraction}.")


@dataclass
class GroupBand:
    """The band of one group of the pool: one class with class balance, else the whole pool.

    Args:
        label (`int`, *optional*): the class, `None` for the whole pool.
        members (`np.ndarray` of int64): the group's drawable dataset indices (scored, finite statistics).
        num_samples (`int`): the group's share of the epoch's composed samples.
        log_level (`float`), log_lower (`float`), log_upper (`float`): log D and the band edges, for the group.
        zone (`np.ndarray` of int64): the group's zone after widening (ascending dataset indices).
        num_in_band (`int`): selectable members inside the band before widening.
        distance (`np.ndarray` of float64): each member's distance to the band in log-difficulty (aligned with
            `members`).
        out_of_reach (`np.ndarray` of bool): each member's guard flag (aligned with `members`).
    """

    label: int | None
    members: np.ndarray
    num_samples: int
    log_level: float
    log_lower: float
    log_upper: float
    zone: np.ndarray
    num_in_band: int
    distance: np.ndarray
    out_of_reach: np.ndarray


@dataclass
class EpochPlan:
    """What one epoch draws.

    Args:
        counts (`np.ndarray` of int64, shape `(dataset_size,)`): how many times each example is drawn; sums to the
            epoch's N. Includes `anneal_counts`.
        anneal_counts (`np.ndarray` of int64, shape `(dataset_size,)`): the part of `counts` drawn uniformly at the
            end of the epoch (annealing).
        zone (`np.ndarray` of int64): the zone, ascending dataset indices (after widening; never out of reach).
        in_band (`np.ndarray` of int64): the drawable examples inside their band before widening (not out of reach).
        out_of_reach (`np.ndarray` of int64): the examples the learnability guard excluded.
        groups (`list[GroupBand]`): the band of each class (or of the whole pool).
        metrics (`dict[str, float]`): the draw's `zpd/*` metrics (see the README's "Logged metrics").
        order (`np.ndarray` of int64, *optional*): the epoch's order, for an epoch drawn in a fixed order (uniform
            epochs follow the plain Trainer's); `None` lets the sampler shuffle the counts.
        loss_weights (`np.ndarray` of float64, *optional*): each example's loss weight in this epoch (pruning:
            1 / (1 - r) for the mastered examples kept); `None`: every weight is 1.
    """

    counts: np.ndarray
    anneal_counts: np.ndarray
    zone: np.ndarray
    in_band: np.ndarray
    out_of_reach: np.ndarray
    groups: list[GroupBand] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    order: np.ndarray | None = None
    loss_weights: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())


def spread_evenly(population: np.ndarray, count: int, rng: np.random.Generator, size: int) -> np.ndarray:
    """Counts over `[0, size)` that draw `count` samples from `population` as evenly as possible.

    Every member gets `count // n` draws, and `count % n` members chosen at random one more: the most even use of a
    population smaller (or larger) than the number of draws.
    """
    counts = np.zeros(size, dtype=np.int64)
    population = np.asarray(population, dtype=np.int64)
    if count <= 0:
        return counts
    if population.size == 0:
        raise ValueError(f"Cannot draw {count} samples from an empty set of examples.")
    base, extra = divmod(count, population.size)
    counts[population] = base
    if extra:
        counts[rng.choice(population, size=extra, replace=False)] += 1
    return counts


def uniform_counts(dataset_size: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """`count` samples drawn uniformly without replacement from the whole set (whole passes first)."""
    return spread_evenly(np.arange(dataset_size, dtype=np.int64), count, rng, dataset_size)


def allocate_by_share(total: int, sizes: np.ndarray) -> np.ndarray:
    """`total` split in proportion to `sizes` by the largest-remainder method: sums to exactly `total`.

    Ties in the remainder go to the earlier group, so the split is a pure function of its inputs.
    """
    sizes = np.asarray(sizes, dtype=np.float64)
    if total == 0 or sizes.sum() == 0:
        return np.zeros(sizes.size, dtype=np.int64)
    exact = total * sizes / sizes.sum()
    shares = np.floor(exact).astype(np.int64)
    remainder = total - int(shares.sum())
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[:remainder]] += 1
    return shares


def update_out_of_reach(
    flagged: np.ndarray,
    loss_before: np.ndarray,
    loss_after: np.ndarray,
    drawn: np.ndarray,
    above_level: np.ndarray,
) -> np.ndarray:
    """The learnability guard: which examples are out of reach after a scoring pass.

    An example is out of reach when it was drawn (trained on) since the previous scoring pass, its loss did not fall
    between the two passes (`loss_after >= loss_before`), and it is not below the model's level (`above_level`: an
    example the model has mastered is not out of reach, whatever its loss did). A flagged example that was not drawn
    since keeps its flag (there is no new evidence); one that was drawn and learned loses it.

    Args:
        flagged (`np.ndarray` of bool): the flags before this pass.
        loss_before (`np.ndarray`), loss_after (`np.ndarray`): each example's loss at the two passes (NaN: unknown).
        drawn (`np.ndarray` of bool): drawn at least once since the previous pass.
        above_level (`np.ndarray` of bool): `log d_i >= log D` at the new pass (D of the example's class with class
            balance).

    Returns:
        `np.ndarray` of bool: the new flags.
    """
    flagged, drawn, above_level = (np.asarray(a, dtype=bool) for a in (flagged, drawn, above_level))
    loss_before, loss_after = np.asarray(loss_before, np.float64), np.asarray(loss_after, np.float64)
    evaluable = drawn & np.isfinite(loss_before) & np.isfinite(loss_after)
    not_learned = evaluable & (loss_after >= loss_before) & above_level
    return not_learned | (flagged & ~drawn)


def group_members(drawable: np.ndarray, labels: np.ndarray | None) -> tuple[list[int | None], list[np.ndarray]]:
    """The groups a band is worked out over: one per class present among the drawable examples when `labels` are
    given, else the whole pool (label `None`). Members are ascending dataset indices."""
    drawable = np.asarray(drawable, dtype=bool)
    if labels is None:
        return [None], [np.flatnonzero(drawable)]
    labels = np.asarray(labels)
    classes = np.unique(labels[drawable])
    return [int(label) for label in classes], [np.flatnonzero(drawable & (labels == label)) for label in classes]


def guard_flags(
    flagged: np.ndarray,
    loss_before: np.ndarray,
    loss_after: np.ndarray,
    drawn: np.ndarray,
    log_difficulty: np.ndarray,
    drawable: np.ndarray,
    labels: np.ndarray | None = None,
) -> np.ndarray:
    """[`update_out_of_reach`] with `above_level` worked out from the new pass: `log d_i >= log D` of the example's
    group (its class when `labels` are given, else the pool)."""
    above_level = np.zeros(np.asarray(drawable).shape[0], dtype=bool)
    for _, members in zip(*group_members(drawable, labels), strict=True):
        log_level, _, _ = band_around_level(log_difficulty[members])
        above_level[members] = log_difficulty[members] >= log_level
    return update_out_of_reach(flagged, loss_before, loss_after, drawn, above_level)


def loss_mixture(values: np.ndarray, iterations: int = 100) -> tuple[np.ndarray, float]:
    """A 2-component Gaussian mixture fitted to `values` by EM: each value's posterior of the high-loss component,
    and how far apart the two components are (Ashman's D).

    DivideMix's clean/noisy split (Li, Socher and Hoi, ICLR 2020): the losses, scaled to [0, 1], modelled as two
    Gaussians, p(high | l_i) = pi_h N(l_i; mu_h, s_h) / sum_c pi_c N(l_i; mu_c, s_c). A skewed but unimodal loss
    distribution (clean data) is fitted by two overlapping components as well; Ashman's
    D = |mu_h - mu_l| sqrt(2 / (s_h^2 + s_l^2)) tells them apart (D > 2: two separate modes; 1.5-1.7 measured on
    unimodal gamma and log-normal losses, 3.6 on 40% flipped labels). Deterministic: the means start at the 10th and
    90th percentiles, each variance at the whole variance, the weights at 1/2; variances are floored at 5e-4
    (sklearn's `reg_covar` in DivideMix).

    Args:
        values (`np.ndarray` of float, shape `(n,)`): finite losses.

    Returns:
        `tuple[np.ndarray, float]`: p(high-loss component | value) of shape `(n,)` (zeros when the values do not vary),
        and D (0 then).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.size < 2 or values.max() - values.min() <= 1e-12:
        return np.zeros(values.size), 0.0
    low, high = values.min(), values.max()
    x = (values - low) / (high - low)  # (n,)
    means = np.quantile(x, [0.1, 0.9])  # (2,)
    variances = np.full(2, max(float(x.var()), 5e-4))
    weights = np.full(2, 0.5)

    def posterior() -> np.ndarray:  # (n, 2)
        log_density = -0.5 * ((x[:, None] - means) ** 2 / variances + np.log(2 * np.pi * variances)) + np.log(weights)
        density = np.exp(log_density - log_density.max(axis=1, keepdims=True))
        return density / density.sum(axis=1, keepdims=True)

    for _ in range(iterations):
        responsibility = posterior()
        mass = responsibility.sum(axis=0) + 1e-12
        new_means = (responsibility * x[:, None]).sum(axis=0) / mass
        variances = np.maximum((responsibility * (x[:, None] - new_means) ** 2).sum(axis=0) / mass, 5e-4)
        weights = mass / mass.sum()
        converged = np.abs(new_means - means).max() < 1e-8
        means = new_means
        if converged:
            break
    separation = float(abs(means[1] - means[0]) * math.sqrt(2.0 / variances.sum()))
    return posterior()[:, int(np.argmax(means))], separation


# Ashman's D above which a loss mixture counts as two separate modes (see `loss_mixture`).
MIN_MIXTURE_SEPARATION = 2.0


def high_loss_flags(
    loss: np.ndarray,
    drawable: np.ndarray,
    labels: np.ndarray | None = None,
    max_fraction: float = 0.5,
    min_group_size: int = 8,
) -> tuple[np.ndarray, int]:
    """Out of reach by the small-loss criterion: in each class whose losses form two separate modes, the examples of
    the high-loss mode, at most `max_fraction` of the class.

    After the model has learnt the easy patterns, a mislabelled example keeps a high loss (Co-teaching, Han et al.,
    NeurIPS 2018; early-learning regularisation, Liu et al., NeurIPS 2020). Per group (each class when `labels` are
    given, else the pool), a 2-component loss mixture ([`loss_mixture`]) is fitted; when its modes are separate
    (Ashman's D >= `MIN_MIXTURE_SEPARATION`), as many examples as it puts in the high mode are flagged, from the highest
    loss down, so the flags are monotone in the loss. A unimodal class (clean data, however skewed) flags nothing, nor
    does a group with fewer than `min_group_size` drawable examples.

    Args:
        loss (`np.ndarray` of shape `(dataset_size,)`): the losses (NaN where not scored).
        drawable (`np.ndarray` of bool): the examples that may be flagged.
        labels (`np.ndarray` of int, *optional*): each example's class; `None` treats the pool as one group.
        max_fraction (`float`, *optional*, defaults to 0.5): the most of each group that may be flagged.
        min_group_size (`int`, *optional*, defaults to 8): smaller groups flag nothing.

    Returns:
        `tuple[np.ndarray, int]`: the flags (bool, `(dataset_size,)`), and how many more the bound kept out.

    Example:

    ```python
    >>> rng = np.random.default_rng(0)
    >>> loss = np.concatenate([rng.gamma(1.0, 0.2, 60), rng.normal(2.0, 0.3, 40)])  # 40 clearly mislabelled
    >>> flags, capped = high_loss_flags(loss, np.ones(100, bool))
    >>> int(flags[60:].sum()), int(flags[:60].sum()), capped
    (40, 0, 0)

    ```
    """
    loss = np.asarray(loss, dtype=np.float64)
    drawable = np.asarray(drawable, dtype=bool) & np.isfinite(loss)
    flags = np.zeros(loss.size, dtype=bool)
    capped = 0
    for _, members in zip(*group_members(drawable, labels), strict=True):
        if members.size < min_group_size:
            continue
        values = loss[members]
        posterior, separation = loss_mixture(values)
        count = int((posterior > 0.5).sum())
        if separation < MIN_MIXTURE_SEPARATION or count == 0:
            continue
        limit = int(math.floor(max_fraction * members.size + 1e-9))
        capped += max(count - limit, 0)
        highest_first = np.lexsort((members, -values))  # ties to the lower index
        flags[members[highest_first[: min(count, limit)]]] = True
    return flags, capped


def band_groups(
    policy: CompositionPolicy,
    num_samples: int,
    log_difficulty: np.ndarray,
    drawable: np.ndarray,
    labels: np.ndarray | None = None,
    out_of_reach: np.ndarray | None = None,
) -> list[GroupBand]:
    """The band of each group (one per class with class balance, else the whole pool) and its share of the epoch.

    Args:
        policy ([`CompositionPolicy`]): the band and the balance settings.
        num_samples (`int`): the composed samples of the epoch (after replay and anneal).
        log_difficulty (`np.ndarray` of shape `(dataset_size,)`): log d_i; NaN where not scored.
        drawable (`np.ndarray` of bool): scored, with finite statistics and at least one supervised position.
        labels (`np.ndarray` of int, *optional*): each example's class, for class balance.
        out_of_reach (`np.ndarray` of bool, *optional*): the guard's flags.
    """
    size = log_difficulty.shape[0]
    drawable = np.asarray(drawable, dtype=bool)
    out_of_reach = np.zeros(size, dtype=bool) if out_of_reach is None else np.asarray(out_of_reach, dtype=bool)
    if not drawable.any():
        raise ValueError("No example of the pool has finite statistics: there is nothing to compose an epoch from.")
    balanced = policy.class_balance and policy.composition != "zone_only"
    group_labels, members = group_members(drawable, labels if balanced else None)
    sizes = np.array([m.size for m in members])
    samples = allocate_by_share(num_samples, sizes)
    batch_shares = allocate_by_share(policy.global_batch_size, sizes)
    groups = []
    for label, member, group_samples, batch_share in zip(group_labels, members, samples, batch_shares, strict=True):
        log_d = log_difficulty[member]
        flags = out_of_reach[member]
        log_level, log_lower, log_upper = band_around_level(log_d, policy.band_lower, policy.band_upper)
        min_size = minimum_zone_size(member.size, policy.min_zone_fraction, max(int(batch_share), 1))
        if policy.composition == "easy_first":
            selection = easiest_share(log_d, policy.easy_fraction, min_size, selectable=~flags)
        else:
            selection = select_zone(log_d, policy.band_lower, policy.band_upper, min_size, selectable=~flags)
        groups.append(
            GroupBand(
                label=label,
                members=member,
                num_samples=int(group_samples),
                log_level=log_level,
                log_lower=log_lower,
                log_upper=log_upper,
                zone=member[selection.indices],
                num_in_band=selection.num_in_band,
                distance=distance_to_band(log_d, log_lower, log_upper),
                out_of_reach=flags,
            )
        )
    return groups


@dataclass(frozen=True)
class EasiestShare:
    """The zone of the `"easy_first"` composition: positions of the easiest examples, and how many that is."""

    indices: np.ndarray
    num_in_band: int


def easiest_share(
    log_difficulty: np.ndarray, fraction: float, min_size: int, selectable: np.ndarray | None = None
) -> EasiestShare:
    """The `ceil(fraction * n)` selectable examples of lowest difficulty (at least `min_size`, ties to the lower
    position): the training set of an easy-to-hard pacing at this point of training, as positions, ascending."""
    log_difficulty = np.asarray(log_difficulty, dtype=np.float64)
    candidates = np.isfinite(log_difficulty)
    if selectable is not None:
        candidates &= np.asarray(selectable, dtype=bool)
    count = min(max(math.ceil(round(fraction * log_difficulty.size, 9)), min_size), int(candidates.sum()))
    keys = np.where(candidates, log_difficulty, np.inf)
    chosen = np.sort(np.argsort(keys, kind="stable")[:count]).astype(np.int64)
    return EasiestShare(chosen, chosen.size)


def fill_order(
    distance: np.ndarray, out_of_reach: np.ndarray, rule: str, temperature: float, rng: np.random.Generator
) -> np.ndarray:
    """The order in which fill candidates are drawn: positions into `distance`, first drawn first.

    `"nearest"`: by distance to the band, ties to the lower position; `"weighted"`: a sample without replacement with
    weights exp(-distance / temperature) (Gumbel top-k: the keys -distance / T + Gumbel noise, sorted); `"uniform"`: a
    random order. Out-of-reach candidates always come after the others, nearest first among them.
    """
    distance = np.asarray(distance, dtype=np.float64)
    if rule == "nearest":
        keys = -distance
    elif rule == "weighted":
        keys = -distance / temperature + rng.gumbel(size=distance.size)
    elif rule == "uniform":
        keys = rng.gumbel(size=distance.size)
    else:
        raise ValueError(f"Unknown fill rule {rule!r}; use one of {FILL_RULES}.")
    flags = np.asarray(out_of_reach, dtype=bool)
    # lexsort sorts by the last key first: out-of-reach last, then by key (descending), then by position.
    positions = np.arange(distance.size)
    return np.lexsort((positions, np.where(flags, distance, -keys), flags))


def draw_group(
    policy: CompositionPolicy,
    group: GroupBand,
    dataset_size: int,
    zone_rng: np.random.Generator,
    fill_rng: np.random.Generator,
) -> tuple[np.ndarray, int, int]:
    """One group's counts: zone draws, then fill. Returns (counts, zone draws, fill draws)."""
    total = group.num_samples
    zone = group.zone
    if policy.composition in ("zone_only", "easy_first"):
        return spread_evenly(zone, total, zone_rng, dataset_size), total, 0
    in_zone = np.isin(group.members, zone)
    candidates = np.flatnonzero(~in_zone)  # positions into members
    num_zone = min(policy.zone_repeats * zone.size, total)
    if candidates.size == 0:  # the zone is the whole group: nothing to fill with
        num_zone = total
    counts = spread_evenly(zone, num_zone, zone_rng, dataset_size)
    remaining = total - num_zone
    if remaining:
        last = (
            group.out_of_reach[candidates]
            if policy.out_of_reach_in_fill == "last"
            else np.zeros(candidates.size, bool)
        )
        order = fill_order(group.distance[candidates], last, policy.fill, policy.fill_temperature, fill_rng)
        ranked = group.members[candidates[order]]
        # Whole passes over the candidates first (each drawn once more), then the first of the order.
        passes, rest = divmod(remaining, ranked.size)
        counts[ranked] += passes
        counts[ranked[:rest]] += 1
    return counts, num_zone, remaining


def compose_epoch(
    policy: CompositionPolicy,
    num_samples: int,
    log_difficulty: np.ndarray,
    drawable: np.ndarray,
    seed: int,
    epoch: int,
    labels: np.ndarray | None = None,
    out_of_reach: np.ndarray | None = None,
    num_anneal: int = 0,
    prune_draws: int = 0,
) -> EpochPlan:
    """The draw counts of one epoch from the pool's scores.

    Args:
        policy ([`CompositionPolicy`]): how to compose.
        num_samples (`int`): N, the epoch's length.
        log_difficulty (`np.ndarray` of shape `(dataset_size,)`): log d_i per training example; NaN where not scored.
        drawable (`np.ndarray` of bool, shape `(dataset_size,)`): examples that may be drawn from the zone or the
            fill: scored, finite, with supervised positions.
        seed (`int`), epoch (`int`): the random choices (which zone examples get an extra draw, the weighted and
            uniform fills, replay and anneal) are a pure function of these and of the other inputs.
        labels (`np.ndarray` of int, *optional*): each example's class (classification), for class balance.
        out_of_reach (`np.ndarray` of bool, *optional*): the out-of-reach flags (the learnability guard's, or a
            high-loss or reference rule's: see `policy.exclude_out_of_reach`).
        num_anneal (`int`, *optional*, defaults to 0): how many of this epoch's samples are drawn uniformly at its
            end (annealing).
        prune_draws (`int`, *optional*, defaults to 0): InfoBatch's unbiased pruning (Qin et al., ICLR 2024): the
            epoch is composed for `num_samples + prune_draws` samples, then `prune_draws` of the draws of mastered
            examples (below the level D of their group, not in the zone) are left out at random, and every mastered
            example kept gets the loss weight 1 / (1 - r), r the share of mastered draws left out, so the expected
            gradient is the unpruned epoch's. If there are fewer mastered draws than that, the rest come off the
            fill's farthest draws (weight 1; `zpd/prune_overflow`). An epoch with annealing draws is not pruned
            (InfoBatch anneals on everything): it is composed for `num_samples`.

    Returns:
        [`EpochPlan`]

    Example:

    ```python
    >>> import numpy as np
    >>> log_d = np.log([1.0, 1.2, 2.0, 2.1, 2.2, 4.0, 9.0, 9.5])  # loss only: d_i = PPL_i, D = 2.80
    >>> policy = CompositionPolicy(zone_repeats=2, class_balance=False)
    >>> plan = compose_epoch(policy, 8, log_d, np.ones(8, bool), seed=0, epoch=2)
    >>> plan.zone.tolist()  # the band [3.08, 3.64] is empty: widened to the nearest example, 4.0
    [5]
    >>> plan.counts.tolist()  # the zone twice, the fill nearest first: the farthest example (1.0) is skipped
    [0, 1, 1, 1, 1, 2, 1, 1]

    ```
    """
    log_difficulty = np.asarray(log_difficulty, dtype=np.float64)
    size = log_difficulty.shape[0]
    if not 0 <= num_anneal <= num_samples:
        raise ValueError(f"num_anneal must be in [0, num_samples={num_samples}], got {num_anneal}.")
    drawable = np.asarray(drawable, dtype=bool) & np.isfinite(log_difficulty)
    flags = np.zeros(size, dtype=bool) if out_of_reach is None else np.asarray(out_of_reach, dtype=bool)
    rng = {tag: np.random.default_rng([seed, epoch, tag]) for tag in (_ZONE_EXTRAS, _FILL, _REPLAY, _ANNEAL, _PRUNE)}
    # Excluded examples (a high-loss or reference rule's flags) are drawn by no part of the epoch; the guard's flags
    # only come last in the fill.
    excluded = flags if policy.exclude_out_of_reach else np.zeros(size, dtype=bool)
    allowed = np.flatnonzero(~excluded)
    if not (drawable & ~excluded).any():
        raise ValueError("Every drawable example is out of reach: there is nothing to compose an epoch from.")

    if prune_draws < 0:
        raise ValueError(f"prune_draws must be non-negative, got {prune_draws}.")
    prune_draws = prune_draws if num_anneal == 0 else 0
    anneal_counts = spread_evenly(allowed, num_anneal, rng[_ANNEAL], size)
    composed = num_samples + prune_draws - num_anneal
    num_replay = int(round(policy.replay_fraction * composed))
    replay_counts = spread_evenly(allowed, num_replay, rng[_REPLAY], size)
    composed -= num_replay

    guarded = flags if policy.composition != "zone_only" and not policy.exclude_out_of_reach else None
    groups = band_groups(policy, composed, log_difficulty, drawable & ~excluded, labels, guarded)
    counts = anneal_counts + replay_counts
    zone_draws = fill_draws = 0
    for group in groups:
        group_counts, group_zone, group_fill = draw_group(policy, group, size, rng[_ZONE_EXTRAS], rng[_FILL])
        counts += group_counts
        zone_draws += group_zone
        fill_draws += group_fill
    zone = np.sort(np.concatenate([group.zone for group in groups]))
    in_band = np.sort(
        np.concatenate([group.members[(group.distance == 0.0) & ~group.out_of_reach] for group in groups])
    )
    loss_weights, prune_metrics = None, {}
    if prune_draws:
        counts, loss_weights, prune_metrics = prune_mastered(
            counts, anneal_counts, groups, log_difficulty, prune_draws, rng[_PRUNE]
        )
    flagged = np.flatnonzero(flags & drawable)
    pool = np.flatnonzero(drawable)
    metrics = {
        "zpd/num_selected": float(zone.size),
        "zpd/num_in_band": float(in_band.size),
        "zpd/num_widened": float(zone.size - np.isin(zone, in_band).sum()),
        "zpd/zone_draws": float(zone_draws),
        "zpd/fill_draws": float(fill_draws),
        "zpd/replay_draws": float(num_replay),
        "zpd/anneal_draws": float(num_anneal),
        "zpd/num_skipped": float((counts[pool] == 0).sum()),
        "zpd/num_out_of_reach": float(flagged.size),
        "zpd/max_draws": float(counts.max()),
        **prune_metrics,
    }
    return EpochPlan(counts, anneal_counts, zone, in_band, flagged, groups, metrics, loss_weights=loss_weights)


def prune_mastered(
    counts: np.ndarray,
    anneal_counts: np.ndarray,
    groups: list[GroupBand],
    log_difficulty: np.ndarray,
    prune_draws: int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, dict[str, float]]:
    """Leaves `prune_draws` draws out of an epoch's counts, from the mastered examples first, InfoBatch's way.

    Mastered: a group's members below its level D (log d < log D) and not in its zone. Draws are left out uniformly at
    random among the mastered draws (a draw is a unit of `counts` not drawn by annealing), and each mastered example
    that keeps a draw gets the loss weight `D_M / (D_M - P_M)` = 1 / (1 - r) (D_M mastered draws, P_M left out).
    Draws beyond D_M come off the farthest composed draws (the largest distance to the band, ties to the higher
    index), one at a time.

    Returns:
        `tuple[np.ndarray, np.ndarray, dict]`: the counts, the loss weights (1 where not mastered), the metrics.
    """
    counts = counts.copy()
    weights = np.ones(counts.size)
    mastered = np.zeros(counts.size, dtype=bool)
    distance = np.full(counts.size, -np.inf)
    for group in groups:
        mastered[group.members[log_difficulty[group.members] < group.log_level]] = True
        mastered[group.zone] = False
        distance[group.members] = group.distance
    composed = counts - anneal_counts
    owners = np.repeat(np.arange(counts.size), np.where(mastered, composed, 0))  # one entry per mastered draw
    from_mastered = min(prune_draws, owners.size)
    if from_mastered:
        left_out = rng.choice(owners.size, size=from_mastered, replace=False)
        np.subtract.at(counts, owners[left_out], 1)
        if from_mastered < owners.size:  # else no mastered draw is left to carry a weight
            weights[mastered & (counts - anneal_counts > 0)] = owners.size / (owners.size - from_mastered)
    overflow = remaining = prune_draws - from_mastered
    candidates = np.flatnonzero(~mastered)
    order = candidates[np.lexsort((-candidates, -distance[candidates]))]  # farthest first
    while remaining:
        for index in order:
            if remaining and counts[index] - anneal_counts[index] > 0:
                counts[index] -= 1
                remaining -= 1
    metrics = {
        "zpd/num_pruned": float(prune_draws),
        "zpd/prune_rate": float(from_mastered / owners.size) if owners.size else 0.0,
        "zpd/prune_overflow": float(overflow),
    }
    return counts, weights, metrics


def anneal_samples(epoch: int, num_samples: int, total_samples: int, anneal_fraction: float) -> int:
    """How many samples of `epoch` (1-based) fall in the last `anneal_fraction` of all `total_samples`.

    Training samples are numbered across epochs; those from `ceil((1 - anneal_fraction) * total_samples)` on are
    the annealing part.
    """
    if anneal_fraction <= 0:
        return 0
    start = math.ceil(round((1 - anneal_fraction) * total_samples, 9))
    first, last = (epoch - 1) * num_samples, epoch * num_samples
    return int(min(max(last - max(first, start), 0), num_samples))
