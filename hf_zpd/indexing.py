"""The example index: how every training example carries its position through the user's collator.

The trainer adds each example's index in the training set under [`INDEX_COLUMN`], so that the statistics of a batch
can be put back at the right rows. Collators that users write build a fresh batch from the keys they know and would
drop it, so [`IndexKeepingCollator`] takes the index out of the features before the user's collator runs and attaches
it to the batch after, for the training loader and the scoring pass alike.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset

# The column the trainer adds to the training set, so that every batch says which examples it holds.
INDEX_COLUMN = "zpd_index"


class IndexedDataset(Dataset):
    """A map-style dataset of dicts, each item extended with its own index under [`INDEX_COLUMN`]."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.dataset[index]
        if not isinstance(item, Mapping):
            raise TypeError(
                f"ZPDTrainer needs dataset items that are dicts (like a datasets.Dataset row), got {type(item)}. "
                "Wrap your dataset so that __getitem__ returns a dict of model inputs and labels."
            )
        return {**item, INDEX_COLUMN: index}


def with_index_column(dataset: Dataset) -> Dataset:
    """`dataset` with each item's own index under [`INDEX_COLUMN`], after checking that it can be scored."""
    import datasets

    if isinstance(dataset, (IterableDataset, datasets.IterableDataset)):
        raise ValueError(
            "ZPDTrainer needs a map-style training dataset with a length: it scores every example and draws "
            f"epochs by index, which an {type(dataset).__name__} cannot do. Load the data as a datasets.Dataset "
            "(for example `Dataset.from_generator(...)` or `load_dataset(..., streaming=False)`), or use the "
            "plain Trainer for streaming data."
        )
    if not hasattr(dataset, "__len__"):
        raise ValueError(
            f"ZPDTrainer needs a training dataset with a length; {type(dataset).__name__} has no __len__."
        )
    if len(dataset) == 0:
        raise ValueError("The training dataset is empty: ZPDTrainer has no example to score or draw.")
    if isinstance(dataset, datasets.Dataset):
        if INDEX_COLUMN in dataset.column_names:
            raise ValueError(
                f"The training dataset already has a column named {INDEX_COLUMN!r}, which ZPDTrainer reserves "
                "for the example index. Rename or remove that column."
            )
        return dataset.add_column(INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64))
    return IndexedDataset(dataset)


class IndexKeepingCollator:
    """Runs `collate_fn` on the features without [`INDEX_COLUMN`], then attaches the index to the batch.

    Features without an index (an evaluation set) go to `collate_fn` unchanged. The batch must be a mutable mapping
    (a dict or a `BatchEncoding`), as the Trainer requires anyway.

    Args:
        collate_fn (`Callable`): the user's data collator (or the Trainer's wrapper around it).

    Example:

    ```python
    >>> def collate(features):  # a hand-written collator that keeps only the keys it knows
    ...     return {"input_ids": torch.tensor([f["input_ids"] for f in features])}
    >>> batch = IndexKeepingCollator(collate)([{"input_ids": [1, 2], "zpd_index": 7}, {"input_ids": [3, 4], "zpd_index": 2}])
    >>> batch["zpd_index"].tolist()
    [7, 2]

    ```
    """

    def __init__(self, collate_fn: Callable):
        self.collate_fn = collate_fn

    def __call__(self, features: list[Any]) -> Any:
        if not features or not isinstance(features[0], Mapping) or INDEX_COLUMN not in features[0]:
            return self.collate_fn(features)
        index = torch.tensor([int(feature[INDEX_COLUMN]) for feature in features], dtype=torch.long)
        batch = self.collate_fn([{k: v for k, v in feature.items() if k != INDEX_COLUMN} for feature in features])
        if not isinstance(batch, MutableMapping):
            raise TypeError(
                f"The data collator returned a {type(batch).__name__}; the Trainer (and ZPDTrainer) need a dict of "
                "model inputs (or a BatchEncoding). Return a dict from the collator."
            )
        batch[INDEX_COLUMN] = index
        return batch
