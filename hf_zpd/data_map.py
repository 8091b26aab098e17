"""The data map of a run (Dataset Cartography, Swayamdipta et al., EMNLP 2020), from its training passes.

Every epoch's training passes measure each example when the epoch draws it, before the step that trains on it (the
record's `train_*` columns), so the map costs no forward pass. For an example i seen in epochs E_i:

    confidence   mu_i    = mean_{e in E_i} p_e(y_i)              (the probability of its given label)
    variability  sigma_i = std_{e in E_i} p_e(y_i)               (population std, as in the paper)
    correctness  c_i     = mean_{e in E_i} [argmax_v p_e(v) = y_i]

with p_e(y_i) = exp(-loss) of the training pass: exactly the label's probability for a classifier (one position per
example), and the geometric mean of the token probabilities for a sequence. Correctness needs the class probabilities,
so it is NaN for language models.

Regions, by thirds as in the paper's selection experiments: *ambiguous* (the third of the examples with the highest
variability: the model gets them right only sometimes), *hard-to-learn* (of the rest, those in the lowest third of
confidence: consistently low, where the paper found most label errors) and *easy-to-learn* (everything else). The
ambiguous region is the curriculum's zone seen from the data's side: examples near the model's level, neither mastered
nor out of reach; the label audit's list sits mostly in the hard-to-learn corner.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REGIONS = ("easy-to-learn", "ambiguous", "hard-to-learn")


@dataclass(frozen=True)
class DataMap:
    """Per-example training dynamics, in dataset order (NaN for an example no training pass measured).

    Args:
        confidence (`np.ndarray` of shape `(N,)`): mean probability of the given label over the training passes.
        variability (`np.ndarray` of shape `(N,)`): its standard deviation over those passes.
        correctness (`np.ndarray` of shape `(N,)`): the share of those passes that predicted the given label (NaN
            without class probabilities).
        num_passes (`np.ndarray` of int, shape `(N,)`): how many epochs' training passes measured the example.
        epochs (`list[int]`): the epochs the map is drawn from.
    """

    confidence: np.ndarray
    variability: np.ndarray
    correctness: np.ndarray
    num_passes: np.ndarray
    epochs: list[int]

    def regions(self) -> np.ndarray:
        """Each example's region (see the module docstring): `"ambiguous"`, `"hard-to-learn"`, `"easy-to-learn"`, or
        `""` for an example no pass measured."""
        measured = np.isfinite(self.confidence)
        region = np.full(self.confidence.size, "", dtype=object)
        if not measured.any():
            return region
        high_variability = np.quantile(self.variability[measured], 2 / 3)
        low_confidence = np.quantile(self.confidence[measured], 1 / 3)
        region[measured] = "easy-to-learn"
        hard = measured & (self.confidence <= low_confidence)
        region[hard] = "hard-to-learn"
        region[measured & (self.variability > high_variability)] = "ambiguous"  # ambiguity takes precedence
        return region


def data_map_from_passes(
    losses: np.ndarray, labels: np.ndarray | None = None, probabilities: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The map's columns from stacked training passes.

    Args:
        losses (`np.ndarray` of shape `(E, N)`): each epoch's training-pass loss (NaN where the epoch did not draw it).
        labels (`np.ndarray` of int, shape `(N,)`, *optional*): the given labels (for correctness).
        probabilities (`np.ndarray` of shape `(E, N, K)`, *optional*): the passes' class probabilities.

    Returns:
        `tuple`: confidence, variability, correctness and the number of passes per example.
    """
    label_probability = np.exp(-np.asarray(losses, dtype=np.float64))  # (E, N); NaN stays NaN
    seen = np.isfinite(label_probability)
    num_passes = seen.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence = np.where(num_passes > 0, np.nansum(label_probability, axis=0) / num_passes, np.nan)
        deviation = np.where(seen, label_probability - confidence, 0.0)
        variability = np.where(num_passes > 0, np.sqrt((deviation**2).sum(axis=0) / num_passes), np.nan)
    correctness = np.full(confidence.shape, np.nan)
    if probabilities is not None and labels is not None:
        probabilities = np.asarray(probabilities, dtype=np.float64)
        right = (probabilities.argmax(axis=2) == np.asarray(labels)[None, :]) & seen  # (E, N)
        with np.errstate(invalid="ignore", divide="ignore"):
            correctness = np.where(num_passes > 0, right.sum(axis=0) / num_passes, np.nan)
    return confidence, variability, correctness, num_passes


def data_map(record) -> DataMap:
    """The data map of a run's record ([`CurriculumRecord`]), from every epoch's training passes.

    Raises:
        `ValueError`: the record has training passes of fewer than two epochs (variability needs two), naming the
            epochs it has.

    Example:

    ```python
    >>> from hf_zpd import load_curriculum
    >>> from hf_zpd.data_map import data_map
    >>> cartography = data_map(load_curriculum("out"))  # doctest: +SKIP
    >>> (cartography.regions() == "ambiguous").mean()  # doctest: +SKIP
    0.33

    ```
    """
    epochs = sorted(record.training_passes)
    if len(epochs) < 2:
        raise ValueError(
            f"A data map needs the training passes of at least two epochs, but the record {record.source or ''} has "
            f"them for epochs {epochs}. Train for two epochs or more (hf_zpd 0.4 or later records them; a replayed "
            "run has none)."
        )
    losses = np.stack([record.training_passes[epoch][0].loss for epoch in epochs])
    probabilities = None
    if all(record.training_passes[epoch][0].probabilities is not None for epoch in epochs):
        probabilities = np.stack([record.training_passes[epoch][0].probabilities for epoch in epochs])
    confidence, variability, correctness, num_passes = data_map_from_passes(losses, record.labels, probabilities)
    return DataMap(confidence, variability, correctness, num_passes, epochs)
