"""The curriculum record: what every epoch drew and why, with every scored example's statistics, as one parquet file.

A record holds, for every epoch of a run, how many times each training example was drawn, the zone it was drawn
around, the band, the scores of the scoring pass behind it, the per-epoch `zpd/*` metrics and the run's settings. It
is the file `zpd_curriculum.parquet`, written into the run's `output_dir` and into every checkpoint (through a
temporary file and an atomic rename); a checkpoint's record is the one source of its zones, draws and score history.
The rows are plain columns (readable by `pandas`, `pyarrow` and `datasets.load_dataset("parquet", ...)`); the settings
and the per-epoch metadata are JSON under the key `hf_zpd` of the parquet schema metadata, so the file is
self-contained. It is read with pyarrow and `json` only (no pickle).

Epochs are numbered as the Trainer logs them: the first epoch is epoch 1. Columns, one row per (epoch, example that
was scored for the epoch or drawn in it):

| column | type | meaning |
|---|---|---|
| `epoch` | int64 | the epoch the row belongs to (1 = the first) |
| `index` | int64 | the example's position in the training set |
| `example_id` | int64 or string | the example's id, from the dataset's id column (only when it has one) |
| `label` | int64 | the example's class (classification; null otherwise) |
| `in_zone` | bool | in the zone the epoch was drawn around (after any widening) |
| `in_band` | bool | inside its band before widening, and drawable: an in-band example the guard put out of reach is `False` here (and `True` in `out_of_reach`) |
| `out_of_reach` | bool | out of reach by the run's `out_of_reach` rule (never in the zone) |
| `draws` | int64 | how many times the epoch drew the example (annealing draws included) |
| `anneal_draws` | int64 | how many of those were the uniform annealing draws at the end of the epoch |
| `loss_weight` | float64 | the example's loss weight in the epoch (1, or 1 / (1 - r) for a mastered example kept by pruning) |
| `loss` | float64 | mean cross-entropy over the example's supervised positions |
| `confidence` | float64 | mean max-probability |
| `entropy` | float64 | mean entropy, divided by log V |
| `competence` | float64 | `wL (1 - min(loss / log V, 1)) + wC confidence + wH (1 - entropy)` |
| `difficulty` | float64 | `exp(log V (1 - competence))`, the effective perplexity (`exp(loss - reference_loss)` with `difficulty_mode="reducible"`) |
| `num_tokens` | int64 | supervised positions (0: never drawn from the zone); null where not scored |
| `scored_at` | int64 | the scoring pass behind the epoch: the number of epochs trained before it (null: none) |
| `level` | float64 | the model's level D for the example's band (its class's with class balance) |
| `band_lower`, `band_upper` | float64 | that band's edges on the difficulty scale |
| `ppl` | float64 | the pool's perplexity exp(mean loss), for the epoch |
| `running_ppl` | float64 | the running training perplexity when the epoch was planned |
| `reference_loss` | float64 | a reference model's loss on the example (only in the records of runs that used one) |
| `probabilities` | list of float64 | a classifier's class probabilities at the scoring pass behind the epoch (at most 128 classes) |
| `train_loss`, `train_confidence`, `train_entropy` | float64 | the example's statistics in the epoch's training pass: when the epoch last drew it, before the optimizer step that trained on it (train mode); null where the epoch did not draw it |
| `train_num_tokens`, `train_step` | int64 | that training pass's supervised positions and global step (null where none) |
| `train_probabilities` | list of float64 | a classifier's class probabilities in that training pass (classifiers with at most 128 classes only) |

Records of format 1 (hf_zpd 0.1: zones only, epochs counted from 0, the `selected` column) are read too, with their
epochs renumbered from 1; they cannot be replayed, because that version drew its epochs by another rule.
"""

from __future__ import annotations

import io
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._io import atomic_write_bytes, package_version
from .band import log_difficulty
from .scoring import ScoreTable

RECORD_NAME = "zpd_curriculum.parquet"
RECORD_FORMAT_VERSION = 2
LEGACY_FORMAT_VERSION = 1
METADATA_KEY = b"hf_zpd"
# Columns searched, in this order, for a stable example id when the user names none.
ID_COLUMN_CANDIDATES = ("id", "idx", "example_id", "guid")
CURATED_PREFIX = "zpd_"

_STATISTICS = ("loss", "confidence", "entropy")
_FLAGS = ("in_zone", "in_band", "out_of_reach")
_COUNTS = ("draws", "anneal_draws")
_EPOCH_COLUMNS = {"ppl": "zpd/ppl", "running_ppl": "zpd/running_ppl"}
_BAND_COLUMNS = ("level", "band_lower", "band_upper")
_ROW_COLUMNS = (
    "epoch",
    "index",
    "label",
    *_FLAGS,
    *_COUNTS,
    "loss_weight",
    *_STATISTICS,
    "competence",
    "difficulty",
    "num_tokens",
    "scored_at",
    *_BAND_COLUMNS,
    *_EPOCH_COLUMNS,
)
_TRAINING_PASS_COLUMNS = ("train_loss", "train_confidence", "train_entropy", "train_num_tokens", "train_step")
_REQUIRED_COLUMNS = ("epoch", "index", *_FLAGS, *_COUNTS, *_STATISTICS, "num_tokens", "scored_at")
_LEGACY_REQUIRED_COLUMNS = ("epoch", "index", "selected", *_STATISTICS, "num_tokens", "scored_at")


@dataclass
class ScoreHistory:
    """Every scoring pass of a run, by the number of epochs trained before it (its boundary).

    The tables are never modified after a pass, so they are kept by reference.

    Args:
        tables (`dict[int, ScoreTable]`): boundary -> the pass's table (boundary 0: before training).
    """

    tables: dict[int, ScoreTable] = field(default_factory=dict)

    def latest(self, before: int | None = None) -> tuple[int, ScoreTable] | None:
        """The last pass (at a boundary below `before`, when given), as `(boundary, table)`; `None` if there is none."""
        boundaries = [b for b in self.tables if before is None or b < before]
        if not boundaries:
            return None
        boundary = max(boundaries)
        return boundary, self.tables[boundary]


@dataclass
class EpochDraw:
    """What one epoch drew, and the zone and band it was drawn around.

    Args:
        epoch (`int`): the epoch (1 = the first).
        counts (`np.ndarray` of int64, shape `(dataset_size,)`): draws per example; sums to the epoch's length.
        anneal_counts (`np.ndarray` of int64, shape `(dataset_size,)`): the uniform annealing part of `counts`.
        zone (`np.ndarray` of int64, *optional*): the zone (ascending dataset indices); `None` for an epoch drawn
            uniformly because no scores existed yet.
        in_band (`np.ndarray` of int64): drawable examples inside their band before widening (not those the guard
            put out of reach).
        out_of_reach (`np.ndarray` of int64): examples the learnability guard excluded.
        scored_at (`int`, *optional*): the boundary of the scoring pass behind the epoch; `None` if none.
        bands (`dict`): the band of each group, `label -> (level, lower, upper)` on the difficulty scale; the label
            is `-1` for a band over the whole pool.
        metrics (`dict[str, float]`): the `zpd/*` metrics logged when the epoch was planned.
        loss_weights (`np.ndarray` of float64, *optional*): each example's loss weight (pruning); `None`: all 1.
    """

    epoch: int
    counts: np.ndarray
    anneal_counts: np.ndarray
    zone: np.ndarray | None = None
    in_band: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    out_of_reach: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    scored_at: int | None = None
    bands: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    loss_weights: np.ndarray | None = None

    @property
    def num_samples(self) -> int:
        return int(self.counts.sum())


@dataclass
class CurriculumRecord:
    """A run's curriculum: every epoch's draws, the zones and scores behind them, the metrics and the settings.

    A trainer keeps its live record as `trainer.curriculum`; [`load_curriculum`] reads a saved one.

    Args:
        settings (`dict[str, Any]`): the run's settings (`dataset_size`, the band, the composition, `seed`, ...).
        epochs (`dict[int, EpochDraw]`): epoch -> what it drew.
        history ([`ScoreHistory`]): the scoring passes behind the epochs.
        labels (`np.ndarray` of int64, *optional*): each example's class, when the run balanced classes (-1: unknown).
        example_ids (`np.ndarray` of objects, *optional*): the id of every example, `None` where unknown.
        id_column (`str`, *optional*): the dataset column the ids came from.
        source (`str`, *optional*): the file it was read from, named in error messages.
        format_version (`int`, *optional*, defaults to 2): the format it was read from.
        reference (`ScoreTable`, *optional*): a reference model's scores of the training set, when the run used one
            (its losses are the `reference_loss` column).
        training_passes (`dict[int, tuple[ScoreTable, np.ndarray]]`): epoch -> the statistics its training passes
            measured (each example's when the epoch last drew it) and the global step of each row (NaN: not drawn).

    Example:

    ```python
    >>> record = hf_zpd.load_curriculum("out")  # a folder, a .parquet file, or a Hub dataset repo id  # doctest: +SKIP
    >>> record.zones[2][:5], record.settings["band_lower"]  # doctest: +SKIP
    (array([ 0,  3,  4,  9, 12]), 1.1)
    >>> record.epochs[2].counts  # how many times epoch 2 drew each training example  # doctest: +SKIP
    >>> record.to_pandas().query("epoch == 2 and in_zone")  # doctest: +SKIP

    ```
    """

    settings: dict[str, Any]
    epochs: dict[int, EpochDraw] = field(default_factory=dict)
    history: ScoreHistory = field(default_factory=ScoreHistory)
    labels: np.ndarray | None = None
    example_ids: np.ndarray | None = None
    id_column: str | None = None
    source: str | None = None
    format_version: int = RECORD_FORMAT_VERSION
    reference: ScoreTable | None = None
    training_passes: dict[int, tuple[ScoreTable, np.ndarray]] = field(default_factory=dict)

    @property
    def dataset_size(self) -> int:
        return int(self.settings["dataset_size"])

    @property
    def competence_weights(self) -> tuple[float, float, float]:
        return tuple(float(w) for w in self.settings["competence_weights"])

    @property
    def zones(self) -> dict[int, np.ndarray]:
        """Epoch -> its zone (ascending dataset indices), for the epochs drawn around one."""
        return {epoch: draw.zone for epoch, draw in sorted(self.epochs.items()) if draw.zone is not None}

    @property
    def epoch_metrics(self) -> dict[int, dict[str, float]]:
        """Epoch -> the `zpd/*` metrics logged when it was planned."""
        return {epoch: draw.metrics for epoch, draw in sorted(self.epochs.items()) if draw.metrics}

    @property
    def latest_scores(self) -> ScoreTable | None:
        """The table of the last scoring pass, or `None` before the first."""
        latest = self.history.latest()
        return None if latest is None else latest[1]

    def scores_for(self, epoch: int) -> ScoreTable | None:
        """The table of the scoring pass behind `epoch`, or `None`."""
        draw = self.epochs.get(epoch)
        if draw is None or draw.scored_at is None:
            return None
        return self.history.tables.get(draw.scored_at)

    # ---- rows ----

    def epoch_rows(self, epoch: int) -> dict[str, np.ndarray]:
        """The rows of one epoch as columns (see the module docstring), in ascending dataset index."""
        draw = self.epochs[epoch]
        size = self.dataset_size
        table = self.scores_for(epoch)
        scored = np.zeros(size, dtype=bool) if table is None else ~np.isnan(table.num_tokens)
        zone = np.zeros(size, dtype=bool)
        if draw.zone is not None:
            zone[draw.zone] = True
        rows = np.flatnonzero(scored | zone | (draw.counts > 0))
        columns: dict[str, np.ndarray] = {"epoch": np.full(rows.size, epoch, dtype=np.int64), "index": rows}
        labels = self.labels
        columns["label"] = labels[rows].astype(np.float64) if labels is not None else np.full(rows.size, np.nan)
        columns["label"][columns["label"] < 0] = np.nan
        columns["in_zone"] = zone[rows]
        columns["in_band"] = np.isin(rows, draw.in_band)
        columns["out_of_reach"] = np.isin(rows, draw.out_of_reach)
        columns["draws"] = draw.counts[rows]
        columns["anneal_draws"] = draw.anneal_counts[rows]
        columns["loss_weight"] = np.ones(rows.size) if draw.loss_weights is None else draw.loss_weights[rows]
        if table is None:
            for name in (*_STATISTICS, "competence", "difficulty", "num_tokens"):
                columns[name] = np.full(rows.size, np.nan)
        else:
            for name in _STATISTICS:
                columns[name] = getattr(table, name)[rows]
            example_competence = table.competence(self.competence_weights)
            columns["competence"] = example_competence[rows]
            if self.settings.get("difficulty_mode") == "reducible" and self.reference is not None:
                columns["difficulty"] = np.exp(table.loss - self.reference.loss)[rows]  # RHO-LOSS's reducible loss
            else:
                columns["difficulty"] = np.exp(log_difficulty(example_competence, table.vocab_size))[rows]
            columns["num_tokens"] = table.num_tokens[rows]
            if table.probabilities is not None:  # the label audit's list of a later epoch reads them (resume)
                columns["probabilities"] = table.probabilities[rows]
        columns["scored_at"] = np.full(rows.size, np.nan if draw.scored_at is None else draw.scored_at)
        band = np.full((rows.size, 3), np.nan)
        for label, edges in draw.bands.items():
            members = np.ones(rows.size, dtype=bool) if label == -1 else columns["label"] == label
            band[members] = edges
        for position, name in enumerate(_BAND_COLUMNS):
            columns[name] = band[:, position]
        for column, key in _EPOCH_COLUMNS.items():
            columns[column] = np.full(rows.size, float(draw.metrics.get(key, math.nan)))
        if self.reference is not None:
            columns["reference_loss"] = self.reference.loss[rows]
        if epoch in self.training_passes:
            passes, steps = self.training_passes[epoch]
            for name in (*_STATISTICS, "num_tokens"):
                columns[f"train_{name}"] = getattr(passes, name)[rows]
            columns["train_step"] = steps[rows]
            if passes.probabilities is not None:
                columns["train_probabilities"] = passes.probabilities[rows]
        return columns

    def to_arrow(self) -> pa.Table:
        """The record as a pyarrow table, with the settings and per-epoch metadata in its schema metadata."""
        parts = [self.epoch_rows(epoch) for epoch in sorted(self.epochs)]
        if parts:
            shared = [name for name in parts[0] if not name.startswith("train_")]
            columns = {name: np.concatenate([part[name] for part in parts]) for name in shared}
            widths = {part["probabilities"].shape[1] for part in parts if "probabilities" in part}
            if widths:  # a classifier's scoring passes: null in epochs without one
                width = widths.pop()
                columns["probabilities"] = np.concatenate(
                    [part.get("probabilities", np.full((part["index"].size, width), np.nan)) for part in parts]
                )
            if any("train_step" in part for part in parts):  # epochs without training passes (replayed) get nulls
                for name in _TRAINING_PASS_COLUMNS:
                    columns[name] = np.concatenate(
                        [part.get(name, np.full(part["index"].size, np.nan)) for part in parts]
                    )
                widths = {part["train_probabilities"].shape[1] for part in parts if "train_probabilities" in part}
                if widths:
                    width = widths.pop()
                    columns["train_probabilities"] = np.concatenate(
                        [
                            part.get("train_probabilities", np.full((part["index"].size, width), np.nan))
                            for part in parts
                        ]
                    )
        else:  # nothing drawn yet: the settings alone, and no rows
            columns = {name: np.zeros(0) for name in _ROW_COLUMNS}
        index = columns["index"].astype(np.int64)
        arrays: dict[str, pa.Array] = {
            "epoch": pa.array(columns["epoch"].astype(np.int64), pa.int64()),
            "index": pa.array(index, pa.int64()),
        }
        if self.id_column is not None and self.example_ids is not None:
            arrays["example_id"] = _id_array(self.example_ids[index])
        arrays["label"] = _nullable_int(columns["label"])
        for name in _FLAGS:
            arrays[name] = pa.array(columns[name].astype(bool), pa.bool_())
        for name in _COUNTS:
            arrays[name] = pa.array(columns[name].astype(np.int64), pa.int64())
        arrays["loss_weight"] = pa.array(columns["loss_weight"].astype(np.float64), pa.float64())
        for name in (*_STATISTICS, "competence", "difficulty"):
            arrays[name] = pa.array(columns[name], pa.float64())
        for name in ("num_tokens", "scored_at"):
            arrays[name] = _nullable_int(columns[name])
        for name in (*_BAND_COLUMNS, *_EPOCH_COLUMNS):
            arrays[name] = pa.array(columns[name], pa.float64())
        if "reference_loss" in columns:
            arrays["reference_loss"] = pa.array(columns["reference_loss"], pa.float64())
        if "probabilities" in columns:
            arrays["probabilities"] = _list_column(columns["probabilities"])
        if "train_step" in columns:
            for name in _TRAINING_PASS_COLUMNS:
                integer = name in ("train_num_tokens", "train_step")
                arrays[name] = _nullable_int(columns[name]) if integer else pa.array(columns[name], pa.float64())
            if "train_probabilities" in columns:
                arrays["train_probabilities"] = _list_column(columns["train_probabilities"])
        table = pa.table(arrays)
        return table.replace_schema_metadata({METADATA_KEY: json.dumps(self._metadata()).encode()})

    def to_pandas(self):
        """The rows as a `pandas.DataFrame`."""
        return self.to_arrow().to_pandas()

    def _metadata(self) -> dict[str, Any]:
        return {
            "format_version": RECORD_FORMAT_VERSION,
            "hf_zpd_version": package_version(),
            "settings": self.settings,
            "id_column": self.id_column if self.example_ids is not None else None,
            "vocab_size": {str(boundary): table.vocab_size for boundary, table in self.history.tables.items()},
            "training_pass_vocab_size": {
                str(epoch): table.vocab_size for epoch, (table, _) in self.training_passes.items()
            },
            "epochs": {
                str(epoch): {
                    "scored_at": draw.scored_at,
                    "has_zone": draw.zone is not None,
                    "bands": [[label, *edges] for label, edges in sorted(draw.bands.items())],
                    "metrics": draw.metrics,
                }
                for epoch, draw in sorted(self.epochs.items())
            },
        }

    # ---- files ----

    def to_parquet_bytes(self) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(self.to_arrow(), buffer, compression="zstd")
        return buffer.getvalue()

    def save(self, path: str) -> str:
        """Writes the record atomically to `path` (a folder gets `zpd_curriculum.parquet`) and returns the file."""
        path = os.fspath(path)
        if not path.endswith(".parquet"):
            path = os.path.join(path, RECORD_NAME)
        atomic_write_bytes(path, self.to_parquet_bytes())
        return path

    @classmethod
    def load(cls, path: str) -> CurriculumRecord:
        """Reads a record file (format 2, or format 1 of hf_zpd 0.1).

        Raises:
            `ValueError`: the file is unreadable, not a curriculum record, or of an unknown format version; the
                message names the file.
        """
        path = os.fspath(path)
        try:
            with open(path, "rb") as handle:
                table = pq.read_table(pa.BufferReader(handle.read()))
            metadata = json.loads((table.schema.metadata or {})[METADATA_KEY])
        except KeyError as error:
            raise ValueError(
                f"{path} is a parquet file but not an hf_zpd curriculum record (no {METADATA_KEY.decode()!r} key in "
                "its schema metadata). Save records with trainer.save_curriculum()."
            ) from error
        except Exception as error:  # any parse failure means a damaged file
            raise ValueError(
                f"The curriculum record {path} is unreadable ({type(error).__name__}: {error}). The file is damaged: "
                "save it again from the run (trainer.save_curriculum), or take the copy in a checkpoint folder."
            ) from error
        version = metadata.get("format_version")
        if version not in (RECORD_FORMAT_VERSION, LEGACY_FORMAT_VERSION):
            raise ValueError(
                f"The curriculum record {path} has format version {version} (written by hf_zpd "
                f"{metadata.get('hf_zpd_version')}), but this hf_zpd ({package_version()}) reads versions "
                f"{LEGACY_FORMAT_VERSION} and {RECORD_FORMAT_VERSION}. Load it with the hf_zpd version that wrote it."
            )
        reader = cls._from_arrow if version == RECORD_FORMAT_VERSION else cls._from_legacy_arrow
        try:
            return reader(table, metadata, path)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(
                f"The curriculum record {path} is inconsistent ({type(error).__name__}: {error}). The file is damaged "
                "or was edited: save it again from the run."
            ) from error

    @classmethod
    def _from_arrow(cls, table: pa.Table, metadata: dict[str, Any], source: str) -> CurriculumRecord:
        column = _column_reader(table, _REQUIRED_COLUMNS)
        settings = metadata["settings"]
        size = int(settings["dataset_size"])
        epoch, index = column("epoch").astype(np.int64), column("index").astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= size):
            raise IndexError(f"dataset indices outside [0, {size})")
        flags = {name: column(name).astype(bool) for name in _FLAGS}
        counts = {name: column(name).astype(np.int64) for name in _COUNTS}
        history = _history_from_rows(column, epoch, index, size, metadata["vocab_size"], table)
        labels = None
        if "label" in table.column_names:
            label = column("label")
            if np.isfinite(label).any():
                labels = np.full(size, -1, dtype=np.int64)
                known = np.isfinite(label)
                labels[index[known]] = label[known].astype(np.int64)
        epochs: dict[int, EpochDraw] = {}
        loss_weight = column("loss_weight").astype(np.float64) if "loss_weight" in table.column_names else None
        for key, entry in metadata["epochs"].items():
            value = int(key)
            rows = epoch == value
            weights = None
            if loss_weight is not None and (loss_weight[rows] != 1.0).any():
                weights = np.ones(size)
                weights[index[rows]] = loss_weight[rows]
            draws = np.zeros(size, dtype=np.int64)
            anneal = np.zeros(size, dtype=np.int64)
            draws[index[rows]] = counts["draws"][rows]
            anneal[index[rows]] = counts["anneal_draws"][rows]
            scored_at = entry["scored_at"]
            if scored_at is not None and int(scored_at) not in history.tables:
                raise ValueError(f"epoch {value} names a scoring pass at boundary {scored_at} with no rows")
            epochs[value] = EpochDraw(
                epoch=value,
                counts=draws,
                anneal_counts=anneal,
                zone=np.sort(index[rows & flags["in_zone"]]) if entry["has_zone"] else None,
                in_band=np.sort(index[rows & flags["in_band"]]),
                out_of_reach=np.sort(index[rows & flags["out_of_reach"]]),
                scored_at=None if scored_at is None else int(scored_at),
                bands={int(label): (float(a), float(b), float(c)) for label, a, b, c in entry["bands"]},
                metrics=dict(entry["metrics"]),
                loss_weights=weights,
            )
        record = cls(settings, dict(sorted(epochs.items())), history, labels, source=source)
        if "reference_loss" in table.column_names:
            record.reference = ScoreTable.empty(size)
            record.reference.loss[index] = column("reference_loss").astype(np.float64)
        if "train_step" in table.column_names:
            vocab_sizes = metadata.get("training_pass_vocab_size", {})
            record.training_passes = _training_passes_from_rows(table, column, epoch, index, size, vocab_sizes)
        return record._with_example_ids(table, metadata, index)

    @classmethod
    def _from_legacy_arrow(cls, table: pa.Table, metadata: dict[str, Any], source: str) -> CurriculumRecord:
        """Format 1 (hf_zpd 0.1): zones only, epochs from 0, `scored_at` boundaries numbered like its epochs."""
        column = _column_reader(table, _LEGACY_REQUIRED_COLUMNS)
        settings = metadata["settings"]
        size = int(settings["dataset_size"])
        epoch, index = column("epoch").astype(np.int64) + 1, column("index").astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= size):
            raise IndexError(f"dataset indices outside [0, {size})")
        selected = column("selected").astype(bool)
        # A format-1 boundary b was the pass before its epoch b (0-based), i.e. after b epochs: the same number.
        history = _history_from_rows(column, epoch, index, size, metadata["vocab_size"])
        epochs = {}
        for key, entry in metadata["epochs"].items():
            value = int(key) + 1
            rows = epoch == value
            zone = np.sort(index[rows & selected])
            scored_at = entry.get("scored_at")
            metrics = dict(entry["metrics"])
            if "zpd/epoch" in metrics:
                metrics["zpd/epoch"] = float(value)
            bands = {}
            if all(key in metrics for key in ("zpd/level", "zpd/band_lower", "zpd/band_upper")):
                bands = {-1: (metrics["zpd/level"], metrics["zpd/band_lower"], metrics["zpd/band_upper"])}
            empty = np.zeros(size, dtype=np.int64)
            epochs[value] = EpochDraw(
                epoch=value,
                counts=empty.copy(),  # format 1 did not store the draws
                anneal_counts=empty.copy(),
                zone=zone,
                scored_at=None if scored_at is None else int(scored_at),
                bands=bands,
                metrics=metrics,
            )
        record = cls(
            settings, dict(sorted(epochs.items())), history, source=source, format_version=LEGACY_FORMAT_VERSION
        )
        return record._with_example_ids(table, metadata, index)

    def _with_example_ids(self, table: pa.Table, metadata: dict[str, Any], index: np.ndarray) -> CurriculumRecord:
        """The record with the example ids of its rows (from the `example_id` column), when it stored any."""
        id_column = metadata.get("id_column")
        if id_column is not None and "example_id" in table.column_names:
            self.example_ids = np.full(self.dataset_size, None, dtype=object)
            self.example_ids[index] = table.column("example_id").to_pylist()
            self.id_column = id_column
        return self

    # ---- replay ----

    def check_replay(
        self,
        dataset_size: int,
        example_ids: Callable[[str], np.ndarray | None],
        num_samples: int,
        seed: int,
        epochs: Sequence[int],
    ) -> None:
        """Raises a `ValueError` if a run with these data and settings would not draw what the record drew.

        Args:
            dataset_size (`int`): the replaying run's training set size.
            example_ids (`Callable[[str], np.ndarray | None]`): the ids of the training set read from a column,
                `None` if it has no such column.
            num_samples (`int`): the replaying run's epoch length.
            seed (`int`): the replaying run's draw seed (`data_seed`, else `seed`): it shuffles each epoch's draws.
            epochs (`Sequence[int]`): the epochs the run will train.
        """
        source = self.source or "the curriculum record"
        if self.format_version != RECORD_FORMAT_VERSION:
            raise ValueError(
                f"Cannot replay {source}: it is a format-{self.format_version} record (hf_zpd 0.1), which stored the "
                "zones but not the draws, and this version composes epochs by another rule. Replay it with hf_zpd "
                "0.1, or train a new run and replay its record."
            )
        if dataset_size != self.dataset_size:
            raise ValueError(
                f"Cannot replay {source}: it was written for a training set of {self.dataset_size} examples, but "
                f"train_dataset has {dataset_size}. Replay it on the training set it was recorded on."
            )
        if self.id_column is not None and self.example_ids is not None:
            ids = example_ids(self.id_column)
            if ids is None:
                raise ValueError(
                    f"Cannot replay {source}: it identifies examples by the column {self.id_column!r}, which "
                    "train_dataset does not have. Replay it on the training set it was recorded on."
                )
            known = np.flatnonzero(np.array([value is not None for value in self.example_ids]))
            different = [i for i in known.tolist() if not _same_id(ids[i], self.example_ids[i])]
            if different:
                first = different[0]
                raise ValueError(
                    f"Cannot replay {source}: {len(different)} examples of train_dataset have other ids than the "
                    f"record's (column {self.id_column!r}; e.g. index {first}: {ids[first]!r} here, "
                    f"{self.example_ids[first]!r} in the record). The data or its order changed: replay it on the "
                    "training set it was recorded on, in the same order."
                )
        changed = []
        if num_samples != self.settings.get("num_samples_per_epoch"):
            changed.append(
                f"an epoch of {num_samples} samples (the record's epochs have "
                f"{self.settings.get('num_samples_per_epoch')}: set epoch_fraction to {self.settings.get('epoch_fraction')})"
            )
        if seed != self.settings.get("seed"):
            changed.append(f"seed {seed} (the record's is {self.settings.get('seed')}; it is data_seed when set)")
        if changed:
            raise ValueError(f"Cannot replay {source}: these settings change the draw: {'; '.join(changed)}.")
        missing = [epoch for epoch in epochs if epoch not in self.epochs]
        if missing:
            raise ValueError(
                f"Cannot replay {source}: the run trains epochs {list(epochs)}, but the record has epochs "
                f"{sorted(self.epochs)} only (missing {missing}). Train at most as many epochs as the recorded run "
                "(num_train_epochs / max_steps)."
            )

    # ---- exports ----

    def curated_dataset(self, dataset, epoch: int | None = None):
        """The training examples that `epoch` drew (every epoch's when `None`), joined with their scores.

        The result is a `datasets.Dataset`: the examples' own columns, then `zpd_epoch`, `zpd_example_index`,
        `zpd_draws`, `zpd_in_zone`, `zpd_in_band`, `zpd_out_of_reach`, `zpd_loss`, `zpd_confidence`, `zpd_entropy`,
        `zpd_competence`, `zpd_difficulty` and `zpd_num_tokens` (see the module docstring). With every epoch, an
        example appears once per epoch that drew it.

        Args:
            dataset (`datasets.Dataset` or map-style dataset of dicts): the training set the record was made on.
            epoch (`int`, *optional*): one epoch (1 = the first), or `None` for all.
        """
        import datasets

        if epoch is not None and epoch not in self.epochs:
            raise ValueError(f"No draws for epoch {epoch}: the record has epochs {sorted(self.epochs)}.")
        if len(dataset) != self.dataset_size:
            raise ValueError(
                f"The record was made on a training set of {self.dataset_size} examples, but this dataset has "
                f"{len(dataset)}."
            )
        names = ("epoch", "index", "draws", *_FLAGS, *_STATISTICS, "competence", "difficulty", "num_tokens")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        for value in sorted(self.epochs) if epoch is None else [epoch]:
            rows = self.epoch_rows(value)
            drawn = rows["draws"] > 0
            for name in names:
                parts[name].append(rows[name][drawn])
        merged = {name: np.concatenate(values) if values else np.zeros(0) for name, values in parts.items()}
        indices = merged["index"].astype(np.int64)
        if isinstance(dataset, datasets.Dataset):
            curated = dataset.select(indices.tolist())
        else:
            curated = datasets.Dataset.from_list([dict(dataset[int(i)]) for i in indices])
        extra: dict[str, list] = {
            "epoch": merged["epoch"].astype(np.int64).tolist(),
            "example_index": indices.tolist(),
            "draws": merged["draws"].astype(np.int64).tolist(),
        }
        for name in _FLAGS:
            extra[name] = merged[name].astype(bool).tolist()
        for name in (*_STATISTICS, "competence", "difficulty"):
            extra[name] = merged[name].astype(np.float64).tolist()
        extra["num_tokens"] = [None if math.isnan(v) else int(v) for v in merged["num_tokens"]]
        for name, values in extra.items():
            column = CURATED_PREFIX + name
            if column in curated.column_names:
                raise ValueError(f"The dataset already has a column named {column!r}; rename it to export scores.")
            curated = curated.add_column(column, values)
        return curated


def class_labels(dataset, label_names: list[str]) -> np.ndarray | None:
    """Each example's class when every example carries one integer class label (classification), else `None`."""
    import datasets

    names = [*label_names, "label", "labels", "label_ids"]
    if isinstance(dataset, datasets.Dataset):
        column = next((name for name in names if name in dataset.column_names), None)
        if column is None:
            return None
        values = dataset.with_format(None)[column]
    else:
        first = dataset[0]
        column = next((name for name in names if isinstance(first, Mapping) and name in first), None)
        if column is None:
            return None
        values = [dataset[i][column] for i in range(len(dataset))]
    values = [value.item() if hasattr(value, "item") and getattr(value, "ndim", 1) == 0 else value for value in values]
    if not all(isinstance(value, (int, np.integer)) and not isinstance(value, bool) for value in values):
        return None  # sequences of labels (causal LM, token classification, seq2seq), or floats
    return np.asarray(values, dtype=np.int64)


def detect_id_column(dataset, id_column: str | None = None) -> str | None:
    """The column holding a stable example id: `id_column` if given (it must exist), else the first of
    `id`, `idx`, `example_id`, `guid` that the dataset has, else `None`."""
    names = _column_names(dataset)
    if id_column is not None:
        if id_column not in names:
            raise ValueError(f"The id column {id_column!r} is not in the training set (columns: {sorted(names)}).")
        return id_column
    return next((name for name in ID_COLUMN_CANDIDATES if name in names), None)


def read_example_ids(dataset, column: str) -> np.ndarray | None:
    """Every example's value in `column`, as an object array; `None` if the dataset has no such column."""
    import datasets

    if column not in _column_names(dataset):
        return None
    if isinstance(dataset, datasets.Dataset):
        values = list(dataset.with_format(None)[column])
    else:
        values = [dataset[i][column] for i in range(len(dataset))]
    ids = np.empty(len(values), dtype=object)
    ids[:] = [_scalar_id(value) for value in values]
    return ids


# ---- helpers ----


def _column_reader(table: pa.Table, required: Sequence[str]) -> Callable[[str], np.ndarray]:
    missing = [name for name in required if name not in table.column_names]
    if missing:
        raise KeyError(f"missing columns {missing}")

    def column(name: str) -> np.ndarray:
        # Nulls (unrecorded integers) become NaN.
        values = table.column(name)
        if values.null_count:
            values = values.cast(pa.float64()).fill_null(math.nan)
        return values.to_numpy(zero_copy_only=False)

    return column


def _history_from_rows(
    column, epoch: np.ndarray, index: np.ndarray, size: int, vocab_sizes: dict, table: pa.Table | None = None
) -> ScoreHistory:
    """The scoring passes, rebuilt from the rows of the first epoch that names each one in `scored_at`."""
    scored_at = column("scored_at").astype(np.float64)
    num_tokens = column("num_tokens").astype(np.float64)
    statistics = {name: column(name).astype(np.float64) for name in _STATISTICS}
    history = ScoreHistory()
    for value in np.unique(epoch):
        rows = epoch == value
        boundaries = np.unique(scored_at[rows])
        if boundaries.size != 1:
            raise ValueError(f"epoch {value} has rows from several scoring passes {boundaries.tolist()}")
        if np.isnan(boundaries[0]) or int(boundaries[0]) in history.tables:
            continue
        boundary = int(boundaries[0])
        scores = ScoreTable.empty(size, int(vocab_sizes[str(boundary)]))
        for name in _STATISTICS:
            getattr(scores, name)[index[rows]] = statistics[name][rows]
        scores.num_tokens[index[rows]] = num_tokens[rows]
        if table is not None:
            scores.probabilities = _probabilities_at(table, "probabilities", rows, index, size)
        history.tables[boundary] = scores
    history.tables = dict(sorted(history.tables.items()))
    return history


def _list_column(values: np.ndarray) -> pa.Array:
    """Rows of class probabilities as a list column, null where a row is NaN (not measured)."""
    missing = np.isnan(values).all(axis=1)
    return pa.array([None if gone else row.tolist() for gone, row in zip(missing, values, strict=True)],
                    pa.list_(pa.float64()))  # fmt: skip


def _probabilities_at(table: pa.Table, name: str, rows: np.ndarray, index: np.ndarray, size: int) -> np.ndarray | None:
    """The list column `name`'s rows `rows` scattered to `index` in an (size, K) array; `None` without any."""
    if name not in table.column_names:
        return None
    values = table.column(name).to_pylist()
    found = [(index[row], values[row]) for row in np.flatnonzero(rows) if values[row] is not None]
    if not found:
        return None
    scattered = np.full((size, len(found[0][1])), np.nan)
    for position, row in found:
        scattered[position] = row
    return scattered


def _training_passes_from_rows(
    table: pa.Table, column, epoch: np.ndarray, index: np.ndarray, size: int, vocab_sizes: dict
) -> dict[int, tuple[ScoreTable, np.ndarray]]:
    """epoch -> (its training passes' table, the global step of each row), from the `train_*` columns."""
    steps = column("train_step").astype(np.float64)
    passes = {}
    for value in np.unique(epoch[~np.isnan(steps)]).tolist():
        rows = np.flatnonzero((epoch == value) & ~np.isnan(steps))
        scores = ScoreTable.empty(size, int(vocab_sizes.get(str(value), 0)))
        for name in (*_STATISTICS, "num_tokens"):
            getattr(scores, name)[index[rows]] = column(f"train_{name}")[rows]
        step = np.full(size, np.nan)
        step[index[rows]] = steps[rows]
        mask = np.zeros(epoch.size, dtype=bool)
        mask[rows] = True
        scores.probabilities = _probabilities_at(table, "train_probabilities", mask, index, size)
        passes[int(value)] = (scores, step)
    return passes


def _nullable_int(values: np.ndarray) -> pa.Array:
    """Integers stored as int64, with NaN (not recorded) as null."""
    values = np.asarray(values, dtype=np.float64)
    unknown = np.isnan(values)
    return pa.array(np.where(unknown, 0, values).astype(np.int64), pa.int64(), mask=unknown)


def _column_names(dataset) -> list[str]:
    names = getattr(dataset, "column_names", None)
    if names is not None:
        return list(names)
    if len(dataset) == 0:
        return []
    first = dataset[0]
    return list(first) if hasattr(first, "keys") else []


def _scalar_id(value: Any) -> int | str:
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:  # a numpy or torch scalar
        value = value.item()
    if isinstance(value, (bool, float)) or not isinstance(value, (int, str)):
        return str(value)
    return value


def _id_array(values: np.ndarray) -> pa.Array:
    values = [_scalar_id(v) for v in values]
    if all(isinstance(v, int) for v in values):
        return pa.array(values, pa.int64())
    return pa.array([str(v) for v in values], pa.string())


def _same_id(left: Any, right: Any) -> bool:
    return _scalar_id(left) == _scalar_id(right) or str(left) == str(right)


__all__ = [
    "CurriculumRecord",
    "EpochDraw",
    "RECORD_NAME",
    "ScoreHistory",
    "detect_id_column",
    "read_example_ids",
]
