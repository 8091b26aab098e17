"""The ZPD band: which scored examples are slightly harder than the model's current level.

Pure numpy, no `transformers` import. With per-example competence k_i over a pool and V the size of the output
distribution (the method, README "How it works"):

    difficulty   d_i = exp(log V * (1 - k_i))                ("effective perplexity")
    level        D   = exp(mean_i log V * (1 - k_i))
    zone         lower * D <= d_i <= upper * D               (default lower = 1.1, upper = 1.3)

With weights (1, 0, 0) and l_i <= log V this is d_i = PPL_i and D = PPL, the loss-only rule (ablation A1).

A zone smaller than `min_size` is widened to the examples nearest to the band in log-difficulty until `min_size`
is met. Examples with a non-finite statistic are never selected; examples without supervised tokens neither.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ZoneSelection:
    """The outcome of one band selection over a pool.

    Args:
        indices (`np.ndarray` of int64):
            Positions (into the arrays given to [`select_zone`]) of the selected examples, ascending.
        level (`float`):
            D, the model's level on the difficulty scale (equal to the pool's PPL in loss-only mode).
        band_lower (`float`), band_upper (`float`):
            The band's edges on the difficulty scale, `lower * D` and `upper * D`.
        num_in_band (`int`):
            How many finite examples fall inside the band before any widening.
        num_widened (`int`):
            How many examples outside the band were added to meet the minimum.
        num_nonfinite (`int`):
            How many examples were excluded for a NaN or infinite statistic (no supervised tokens included).
        num_scored (`int`):
            The pool size given.
    """

    indices: np.ndarray
    level: float
    band_lower: float
    band_upper: float
    num_in_band: int
    num_widened: int
    num_nonfinite: int
    num_scored: int

    @property
    def zone_fraction(self) -> float:
        """Fraction of the pool inside the band before widening."""
        return self.num_in_band / self.num_scored if self.num_scored else 0.0


def log_difficulty(competence: np.ndarray, vocab_size: int) -> np.ndarray:
    """log d_i = log V * (1 - k_i)."""
    return math.log(vocab_size) * (1.0 - np.asarray(competence, dtype=np.float64))


def minimum_zone_size(pool_size: int, min_zone_fraction: float, global_batch_size: int) -> int:
    """The smallest zone an epoch may draw from: `ceil(fraction * pool)`, never below one global batch.

    The global-batch floor exists because on a near-untrained model the band can hold a single example, and a bare
    percentage floor of a small pool would then train whole epochs on a handful of examples.
    """
    # round() drops floating-point noise first: 100 * 0.07 is 7.000000000000001, and means 7.
    return max(math.ceil(round(min_zone_fraction * pool_size, 9)), global_batch_size, 1)


def band_around_level(
    log_difficulties: np.ndarray, lower: float = 1.1, upper: float = 1.3, valid: np.ndarray | None = None
) -> tuple[float, float, float]:
    """The level and the band edges, in log-difficulty: `(log D, log D + log lower, log D + log upper)`.

    `log D` is the mean log-difficulty of the finite examples (and of those `valid` allows); NaN when there is none.
    """
    if not 0 < lower < upper:
        raise ValueError(f"The band needs 0 < lower < upper, got lower={lower}, upper={upper}.")
    log_difficulties = np.asarray(log_difficulties, dtype=np.float64)
    usable = np.isfinite(log_difficulties)
    if valid is not None:
        usable &= np.asarray(valid, dtype=bool)
    if not usable.any():
        return math.nan, math.nan, math.nan
    log_level = float(log_difficulties[usable].mean())
    return log_level, log_level + math.log(lower), log_level + math.log(upper)


def distance_to_band(log_difficulties: np.ndarray, log_lower: float, log_upper: float) -> np.ndarray:
    """`max(log_lower - log d_i, log d_i - log_upper, 0)`: 0 inside the band, NaN where log d_i is not finite."""
    log_difficulties = np.asarray(log_difficulties, dtype=np.float64)
    distance = np.maximum(log_lower - log_difficulties, log_difficulties - log_upper).clip(min=0.0)
    distance[~np.isfinite(log_difficulties)] = np.nan
    return distance


def select_zone(
    log_difficulties: np.ndarray,
    lower: float = 1.1,
    upper: float = 1.3,
    min_size: int = 1,
    valid: np.ndarray | None = None,
    selectable: np.ndarray | None = None,
) -> ZoneSelection:
    """Selects the examples whose difficulty lies in `[lower * D, upper * D]`, widening to `min_size` if needed.

    Widening takes the examples nearest to the band, by the distance in log-difficulty to the nearer band edge
    (zero inside); ties go to the lower position, so the result is a pure function of the inputs.

    Args:
        log_difficulties (`np.ndarray` of shape `(N,)`):
            log d_i per example of the pool; NaN or inf marks an example that cannot be scored.
        lower (`float`, *optional*, defaults to 1.1), upper (`float`, *optional*, defaults to 1.3):
            The band edges relative to the level D.
        min_size (`int`, *optional*, defaults to 1):
            The smallest zone; capped at the number of selectable examples.
        valid (`np.ndarray` of bool, *optional*):
            Extra exclusions, from the level and from the zone (for instance, an example whose loss is finite but
            whose entropy is not).
        selectable (`np.ndarray` of bool, *optional*):
            Examples that count towards the level D but may not enter the zone (the learnability guard's
            out-of-reach examples).

    Returns:
        [`ZoneSelection`]

    Example:

    ```python
    >>> import numpy as np
    >>> ppl = np.array([10.0, 10.0, 10.0, 10.0, 12.0, 12.0])  # loss-only: d_i = PPL_i
    >>> zone = select_zone(np.log(ppl), lower=1.1, upper=1.3)
    >>> round(zone.level, 2), round(zone.band_lower, 2), round(zone.band_upper, 2), zone.indices.tolist()
    (10.63, 11.69, 13.81, [4, 5])

    ```
    """
    log_difficulties = np.asarray(log_difficulties, dtype=np.float64)
    finite = np.isfinite(log_difficulties)
    if valid is not None:
        finite &= np.asarray(valid, dtype=bool)
    num_scored = log_difficulties.shape[0]
    num_finite = int(finite.sum())
    log_level, log_lower, log_upper = band_around_level(log_difficulties, lower, upper, finite)
    if num_finite == 0:
        return ZoneSelection(np.zeros(0, dtype=np.int64), math.nan, math.nan, math.nan, 0, 0, num_scored, num_scored)
    # Distance to the band in log-difficulty: 0 inside, +inf for examples that cannot be selected.
    distance = distance_to_band(log_difficulties, log_lower, log_upper)
    candidates = finite if selectable is None else finite & np.asarray(selectable, dtype=bool)
    distance[~candidates] = np.inf
    in_band = distance == 0.0
    num_in_band = int(in_band.sum())

    target = min(max(min_size, num_in_band), int(candidates.sum()))
    if num_in_band >= target:
        chosen = np.flatnonzero(in_band)
    else:
        # A stable sort breaks ties by position, which keeps the widening deterministic.
        chosen = np.sort(np.argsort(distance, kind="stable")[:target])
    return ZoneSelection(
        indices=chosen.astype(np.int64),
        level=math.exp(log_level),
        band_lower=math.exp(log_lower),
        band_upper=math.exp(log_upper),
        num_in_band=num_in_band,
        num_widened=int(chosen.size - num_in_band),
        num_nonfinite=num_scored - num_finite,
        num_scored=num_scored,
    )
