"""The curriculum as data: what each epoch selected, with every scored example's statistics, saved as one parquet file.

A record holds, for every epoch that drew from a zone, the examples of the scoring pass behind that zone (one row per
(epoch, scored example), with a `selected` flag), the band edges, the perplexities, and the run's settings. It is the
file `zpd_curriculum.parquet`: the rows are plain columns (readable by `pandas`, `pyarrow` and
`datasets.load_dataset("parquet", ...)`), and the settings and the per-epoch `zpd/*` metrics are JSON under the key
`hf_zpd` of the parquet schema metadata, so the file is self-contained. It is written through a temporary file and an
atomic rename, and read with pyarrow and `json` only (no pickle).

Columns, one row per (epoch, scored example):

| column | type | meaning |
|---|---|---|
| `epoch` | int64 | the epoch whose zone the row belongs to |
| `index` | int64 | the example's position in the training set |
| `example_id` | int64 or string | the example's id, from the dataset's id column (only when it has one) |
| `selected` | bool | in the zone the epoch drew from (after any widening) |
| `in_band` | bool | inside the band `[band_lower, band_upper]` before widening |
| `loss` | float64 | mean cross-entropy over the example's supervised positions |
| `confidence` | float64 | mean max-probability |
| `entropy` | float64 | mean entropy, divided by log V |
| `competence` | float64 | `wL (1 - min(loss / log V, 1)) + wC confidence + wH (1 - entropy)` |
| `difficulty` | float64 | `exp(log V (1 - competence))`, the effective perplexity |
| `num_tokens` | int64 | supervised positions (0: never selected); null where the scores were not recorded |
| `scored_at` | int64 | the epoch boundary of the scoring pass behind the zone (below `epoch` when `rescore_every` > 1) |
| `level` | float64 | the model's level D on the difficulty scale, for the epoch |
| `band_lower`, `band_upper` | float64 | the band's edges on the difficulty scale, for the epoch |
| `ppl` | float64 | the pool's perplexity exp(mean loss), for the epoch |
| `running_ppl` | float64 | the running training perplexity when the zone was chosen |

A statistic is NaN where the model gave non-finite values, and for every row of an epoch whose scores were not
recorded (a run resumed from a checkpoint written before records existed): the selection is then still exact.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .band import log_difficulty, select_zone
from .curriculum import atomic_write_bytes
from .scoring import ScoreTable

RECORD_NAME = "zpd_curriculum.parquet"
RECORD_FORMAT_VERSION = 1
METADATA_KEY = b"hf_zpd"
# Columns searched, in this order, for a stable example id when the user names none.
ID_COLUMN_CANDIDATES = ("id", "idx", "example_id", "guid")
# Settings a replay must share with the record, because the draw of every epoch is a function of them.
DRAW_SETTINGS = ("epoch_fraction", "replay_fraction", "seed", "score_before_training")
CURATED_PREFIX = "zpd_"
TEMPLATES = resources.files("hf_zpd.templates")  # model_cards/templates/ in the source tree
CURRICULUM_CARD_TEMPLATE = "curriculum_card.md"
MODEL_CARD_TEMPLATE = "model_card.md"
# Marks the curriculum section of a model card, so that rendering the card twice does not repeat it.
MODEL_CARD_MARKER = "<!-- hf_zpd curriculum section -->"

_STATISTICS = ("loss", "confidence", "entropy")
_EPOCH_COLUMNS = {
    "level": "zpd/level",
    "band_lower": "zpd/band_lower",
    "band_upper": "zpd/band_upper",
    "ppl": "zpd/ppl",
    "running_ppl": "zpd/running_ppl",
}
_ROW_COLUMNS = (
    "epoch",
    "index",
    "selected",
    "in_band",
    *_STATISTICS,
    "competence",
    "difficulty",
    "num_tokens",
    "scored_at",
    *_EPOCH_COLUMNS,
)
_REQUIRED_COLUMNS = ("epoch", "index", "selected", *_STATISTICS, "num_tokens", "scored_at")


def _package_version() -> str:
    # Read at call time: `hf_zpd/__init__.py` imports this module before it defines `__version__`.
    from . import __version__

    return __version__


@dataclass
class ScoreHistory:
    """Every scoring pass of a run, and which pass each epoch's zone was chosen from.

    The trainer's [`CurriculumState`] keeps only the last two passes (all that a resumed run needs to draw); this
    keeps them all, by reference (the tables are never modified after a pass). It is not in `zpd_state.safetensors`:
    it lives in the record file written beside it, and is read back from there on resume.

    Args:
        tables (`dict[int, ScoreTable]`): the epoch boundary at which each pass ran -> its table.
        scored_at (`dict[int, int]`): epoch -> the boundary (a key of `tables`) whose scores chose its zone.
    """

    tables: dict[int, ScoreTable] = field(default_factory=dict)
    scored_at: dict[int, int] = field(default_factory=dict)

    def remember(self, epoch: int, boundary: int, table: ScoreTable) -> None:
        self.tables[boundary] = table
        self.scored_at[epoch] = boundary

    def table_for(self, epoch: int) -> ScoreTable | None:
        boundary = self.scored_at.get(epoch)
        return None if boundary is None else self.tables.get(boundary)


@dataclass
class CurriculumRecord:
    """A run's curriculum: each epoch's zone, the scores behind it, the per-epoch metrics and the settings.

    Build one with [`ZPDTrainer.curriculum_record`], read one with [`load_curriculum`].

    Args:
        settings (`dict[str, Any]`):
            The run's settings: `dataset_size`, `band_lower`, `band_upper`, `difficulty_mode`, `competence_weights`
            (the effective ones), `min_zone_fraction`, `replay_fraction`, `epoch_fraction`, `seed` (the draw's seed),
            `score_before_training`, `rescore_every`, `scoring_pool_size`, `num_train_epochs`, and where known
            `base_model` and `source_dataset`.
        zones (`dict[int, np.ndarray]`): epoch -> the ascending dataset indices it drew from.
        history (`ScoreHistory`): the scoring passes behind the zones.
        epoch_metrics (`dict[int, dict[str, float]]`): epoch -> the `zpd/*` metrics logged when its zone was chosen.
        example_ids (`np.ndarray` of objects, *optional*): the id of every example, `None` where unknown.
        id_column (`str`, *optional*): the dataset column the ids came from.
        source (`str`, *optional*): the file it was read from, named in error messages.

    Example:

    ```python
    >>> record = hf_zpd.load_curriculum("out")  # a folder, a .parquet file, or a Hub dataset repo id  # doctest: +SKIP
    >>> record.zones[1][:5], record.settings["band_lower"]  # doctest: +SKIP
    (array([ 0,  3,  4,  9, 12]), 1.1)
    >>> record.to_pandas().query("epoch == 1 and selected")  # doctest: +SKIP

    ```
    """

    settings: dict[str, Any]
    zones: dict[int, np.ndarray] = field(default_factory=dict)
    history: ScoreHistory = field(default_factory=ScoreHistory)
    epoch_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    example_ids: np.ndarray | None = None
    id_column: str | None = None
    source: str | None = None

    @property
    def dataset_size(self) -> int:
        return int(self.settings["dataset_size"])

    @property
    def competence_weights(self) -> tuple[float, float, float]:
        return tuple(float(w) for w in self.settings["competence_weights"])

    # ---- rows ----

    def epoch_rows(self, epoch: int) -> dict[str, np.ndarray]:
        """The rows of one epoch as columns (see the module docstring), in ascending dataset index."""
        zone = np.asarray(self.zones[epoch], dtype=np.int64)
        if zone.size > 1 and not (np.diff(zone) > 0).all():
            raise ValueError(
                f"The zone of epoch {epoch} is not ascending and unique; a record stores zones as sets of rows, so "
                "it could not give the same draw back."
            )
        table = self.history.table_for(epoch)
        if table is None:
            rows = zone
            statistics = {name: np.full(rows.size, np.nan) for name in (*_STATISTICS, "competence", "difficulty")}
            num_tokens = np.full(rows.size, np.nan)
            in_band = np.zeros(rows.size, dtype=bool)
        else:
            pool = np.flatnonzero(~np.isnan(table.num_tokens))
            rows = np.union1d(pool, zone)
            example_competence = table.competence(self.competence_weights)
            log_d = log_difficulty(example_competence, table.vocab_size)
            # The band alone (no minimum size), by the same function and inputs as the trainer's selection.
            band = select_zone(
                log_d[pool],
                self.settings["band_lower"],
                self.settings["band_upper"],
                min_size=0,
                valid=table.finite()[pool],
            )
            in_band = np.isin(rows, pool[band.indices])
            statistics = {name: getattr(table, name)[rows] for name in _STATISTICS}
            statistics["competence"] = example_competence[rows]
            statistics["difficulty"] = np.exp(log_d[rows])
            num_tokens = table.num_tokens[rows]
        metrics = self.epoch_metrics.get(epoch, {})
        boundary = self.history.scored_at.get(epoch)
        columns: dict[str, np.ndarray] = {
            "epoch": np.full(rows.size, epoch, dtype=np.int64),
            "index": rows,
            "selected": np.isin(rows, zone),
            "in_band": in_band,
            **statistics,
            "num_tokens": num_tokens,
            "scored_at": np.full(rows.size, np.nan if boundary is None else boundary),
        }
        for column, key in _EPOCH_COLUMNS.items():
            columns[column] = np.full(rows.size, float(metrics.get(key, math.nan)))
        return columns

    def to_arrow(self) -> pa.Table:
        """The record as a pyarrow table, with the settings and per-epoch metrics in its schema metadata."""
        parts = [self.epoch_rows(epoch) for epoch in sorted(self.zones)]
        columns = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]} if parts else None
        if columns is None:  # no epoch has drawn from a zone yet: the settings alone, and no rows
            columns = {name: np.zeros(0) for name in _ROW_COLUMNS}
        index = columns["index"].astype(np.int64)
        arrays: dict[str, pa.Array] = {
            "epoch": pa.array(columns["epoch"].astype(np.int64), pa.int64()),
            "index": pa.array(index, pa.int64()),
        }
        if self.id_column is not None and self.example_ids is not None:
            arrays["example_id"] = _id_array(self.example_ids[index])
        for name in ("selected", "in_band"):
            arrays[name] = pa.array(columns[name].astype(bool), pa.bool_())
        for name in (*_STATISTICS, "competence", "difficulty"):
            arrays[name] = pa.array(columns[name], pa.float64())
        for name in ("num_tokens", "scored_at"):
            # NaN here means "not recorded": stored as a null integer.
            values = np.asarray(columns[name], dtype=np.float64)
            unknown = np.isnan(values)
            arrays[name] = pa.array(np.where(unknown, 0, values).astype(np.int64), pa.int64(), mask=unknown)
        for name in _EPOCH_COLUMNS:
            arrays[name] = pa.array(columns[name], pa.float64())
        table = pa.table(arrays)
        return table.replace_schema_metadata({METADATA_KEY: json.dumps(self._metadata()).encode()})

    def to_pandas(self):
        """The rows as a `pandas.DataFrame`."""
        return self.to_arrow().to_pandas()

    def _metadata(self) -> dict[str, Any]:
        return {
            "format_version": RECORD_FORMAT_VERSION,
            "hf_zpd_version": _package_version(),
            "settings": self.settings,
            "id_column": self.id_column if self.example_ids is not None else None,
            "vocab_size": {str(boundary): table.vocab_size for boundary, table in self.history.tables.items()},
            "epochs": {
                str(epoch): {
                    "scored_at": self.history.scored_at.get(epoch),
                    "metrics": self.epoch_metrics.get(epoch, {}),
                }
                for epoch in sorted(self.zones)
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
        """Reads a record file.

        Raises:
            `ValueError`: the file is unreadable, not a curriculum record, or of another format version; the message
                names the file.
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
        if version != RECORD_FORMAT_VERSION:
            raise ValueError(
                f"The curriculum record {path} has format version {version} (written by hf_zpd "
                f"{metadata.get('hf_zpd_version')}), but this hf_zpd ({_package_version()}) reads version "
                f"{RECORD_FORMAT_VERSION}. Load it with the hf_zpd version that wrote it."
            )
        try:
            return cls._from_arrow(table, metadata, path)
        except (KeyError, TypeError, ValueError, IndexError) as error:
            raise ValueError(
                f"The curriculum record {path} is inconsistent ({type(error).__name__}: {error}). The file is damaged "
                "or was edited: save it again from the run."
            ) from error

    @classmethod
    def _from_arrow(cls, table: pa.Table, metadata: dict[str, Any], source: str) -> CurriculumRecord:
        missing = [name for name in _REQUIRED_COLUMNS if name not in table.column_names]
        if missing:
            raise KeyError(f"missing columns {missing}")
        settings = metadata["settings"]
        size = int(settings["dataset_size"])

        def column(name: str) -> np.ndarray:
            # Nulls (unrecorded integers) become NaN.
            values = table.column(name)
            if values.null_count:
                values = values.cast(pa.float64()).fill_null(math.nan)
            return values.to_numpy(zero_copy_only=False)

        epoch, index = column("epoch").astype(np.int64), column("index").astype(np.int64)
        if index.size and (index.min() < 0 or index.max() >= size):
            raise IndexError(f"dataset indices outside [0, {size})")
        selected = column("selected").astype(bool)
        num_tokens = column("num_tokens").astype(np.float64)
        scored_at = column("scored_at").astype(np.float64)
        statistics = {name: column(name).astype(np.float64) for name in _STATISTICS}
        vocab_sizes = {int(boundary): int(v) for boundary, v in metadata["vocab_size"].items()}

        zones: dict[int, np.ndarray] = {}
        history = ScoreHistory()
        for value in np.unique(epoch):
            rows = epoch == value
            zones[int(value)] = np.sort(index[rows & selected])
            boundaries = np.unique(scored_at[rows])
            if boundaries.size != 1:
                raise ValueError(f"epoch {value} has rows from several scoring passes {boundaries.tolist()}")
            if np.isnan(boundaries[0]):
                continue
            boundary = int(boundaries[0])
            if boundary not in history.tables:
                scores = ScoreTable.empty(size, vocab_sizes[boundary])
                for name in _STATISTICS:
                    getattr(scores, name)[index[rows]] = statistics[name][rows]
                scores.num_tokens[index[rows]] = num_tokens[rows]
                history.tables[boundary] = scores
            history.scored_at[int(value)] = boundary
        example_ids = None
        id_column = metadata.get("id_column")
        if id_column is not None and "example_id" in table.column_names:
            example_ids = np.full(size, None, dtype=object)
            example_ids[index] = table.column("example_id").to_pylist()
        epoch_metrics = {int(e): dict(entry["metrics"]) for e, entry in metadata["epochs"].items()}
        return cls(
            settings=settings,
            zones=dict(sorted(zones.items())),
            history=history,
            epoch_metrics=epoch_metrics,
            example_ids=example_ids,
            id_column=id_column if example_ids is not None else None,
            source=source,
        )

    # ---- replay ----

    def check_replay(
        self,
        dataset_size: int,
        example_ids: Callable[[str], np.ndarray | None],
        settings: dict[str, Any],
        epochs: Sequence[int],
    ) -> None:
        """Raises a `ValueError` if a run with these data and settings would not draw what the record drew.

        Args:
            dataset_size (`int`): the replaying run's training set size.
            example_ids (`Callable[[str], np.ndarray | None]`): the ids of the training set read from a column,
                `None` if it has no such column.
            settings (`dict[str, Any]`): the replaying run's settings (at least those in `DRAW_SETTINGS`).
            epochs (`Sequence[int]`): the epochs the run will train that need a zone.
        """
        source = self.source or "the curriculum record"
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
            different = [i for i in known.tolist() if _same_id(ids[i], self.example_ids[i]) is False]
            if different:
                first = different[0]
                raise ValueError(
                    f"Cannot replay {source}: {len(different)} examples of train_dataset have other ids than the "
                    f"record's (column {self.id_column!r}; e.g. index {first}: {ids[first]!r} here, "
                    f"{self.example_ids[first]!r} in the record). The data or its order changed: replay it on the "
                    "training set it was recorded on, in the same order."
                )
        changed = [
            f"{name}={settings.get(name)!r} (the record has {self.settings.get(name)!r})"
            for name in DRAW_SETTINGS
            if not _same_setting(settings.get(name), self.settings.get(name))
        ]
        if changed:
            raise ValueError(
                f"Cannot replay {source}: these settings change the draw: {', '.join(changed)}. Set them to the "
                "record's values (seed is data_seed when set, else seed)."
            )
        missing = [epoch for epoch in epochs if epoch not in self.zones]
        if missing:
            raise ValueError(
                f"Cannot replay {source}: the run trains epochs {list(epochs)} from a zone, but the record has zones "
                f"for epochs {sorted(self.zones)} only (missing {missing}). Train at most as many epochs as the "
                "recorded run (num_train_epochs / max_steps)."
            )

    # ---- exports ----

    def curated_dataset(self, dataset, epoch: int | None = None):
        """The training examples that `epoch` selected (every epoch's when `None`), joined with their scores.

        The result is a `datasets.Dataset`: the examples' own columns, then `zpd_epoch`, `zpd_example_index`,
        `zpd_in_band`, `zpd_loss`, `zpd_confidence`, `zpd_entropy`, `zpd_competence`, `zpd_difficulty` and
        `zpd_num_tokens` (see the module docstring). With every epoch, an example appears once per epoch that
        selected it.

        Args:
            dataset (`datasets.Dataset` or map-style dataset of dicts): the training set the record was made on.
            epoch (`int`, *optional*): one epoch, or `None` for all.
        """
        import datasets

        if epoch is not None and epoch not in self.zones:
            raise ValueError(f"No zone for epoch {epoch}: the record has zones for epochs {sorted(self.zones)}.")
        if len(dataset) != self.dataset_size:
            raise ValueError(
                f"The record was made on a training set of {self.dataset_size} examples, but this dataset has "
                f"{len(dataset)}."
            )
        epochs = sorted(self.zones) if epoch is None else [epoch]
        selected = {name: [] for name in _ROW_COLUMNS}
        for value in epochs:
            rows = self.epoch_rows(value)
            for name in _ROW_COLUMNS:
                selected[name].append(rows[name][rows["selected"]])
        merged = {name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in selected.items()}
        indices = merged["index"].astype(np.int64)
        if isinstance(dataset, datasets.Dataset):
            curated = dataset.select(indices.tolist())
        else:
            curated = datasets.Dataset.from_list([dict(dataset[int(i)]) for i in indices])
        extra = {
            "epoch": merged["epoch"].astype(np.int64).tolist(),
            "example_index": indices.tolist(),
            "in_band": merged["in_band"].astype(bool).tolist(),
        }
        for name in (*_STATISTICS, "competence", "difficulty"):
            extra[name] = merged[name].astype(np.float64).tolist()
        extra["num_tokens"] = [None if math.isnan(v) else int(v) for v in merged["num_tokens"]]
        for name, values in extra.items():
            column = CURATED_PREFIX + name
            if column in curated.column_names:
                raise ValueError(f"The dataset already has a column named {column!r}; rename it to export scores.")
            curated = curated.add_column(column, values)
        return curated

    def card_context(self, repo_id: str | None = None) -> dict[str, Any]:
        """The values the card templates render: settings, and one preformatted row per epoch."""
        settings = self.settings
        last_epoch = max([*self.zones, 0])
        epochs = []
        for epoch in range(last_epoch + 1):
            metrics = self.epoch_metrics.get(epoch, {})
            if epoch not in self.zones:
                epochs.append({"epoch": epoch, "source": "whole training set (no scores yet)"})
                continue
            boundary = self.history.scored_at.get(epoch, metrics.get("zpd/epoch"))
            source = "zone" if boundary in (None, epoch) else f"zone (scores of epoch {boundary})"
            if settings.get("replay_fraction"):
                source += f" + {settings['replay_fraction']:.0%} replay"
            epochs.append(
                {
                    "epoch": epoch,
                    "source": source,
                    "ppl": _fmt(metrics.get("zpd/ppl")),
                    "running_ppl": _fmt(metrics.get("zpd/running_ppl")),
                    "level": _fmt(metrics.get("zpd/level")),
                    "band": f"[{_fmt(metrics.get('zpd/band_lower'))}, {_fmt(metrics.get('zpd/band_upper'))}]",
                    "zone_fraction": _fmt(metrics.get("zpd/zone_fraction"), "{:.1%}"),
                    "selected": _fmt(metrics.get("zpd/num_selected"), "{:.0f}", len(self.zones[epoch])),
                    "widened": _fmt(metrics.get("zpd/num_widened"), "{:.0f}"),
                    "scored": _fmt(metrics.get("zpd/num_scored"), "{:.0f}"),
                }
            )
        return {
            "repo_id": repo_id or "LOCAL_PATH_OR_REPO_ID",
            "hf_zpd_version": _package_version(),
            "format_version": RECORD_FORMAT_VERSION,
            "record_name": RECORD_NAME,
            "id_column": self.id_column,
            "settings": settings,
            "weights": ", ".join(f"{w:g}" for w in self.competence_weights),
            "epochs": epochs,
            "num_rows": sum(len(self.epoch_rows(epoch)["index"]) for epoch in self.zones),
        }

    def card(
        self,
        repo_id: str | None = None,
        license: str | None = None,
        pretty_name: str | None = None,
        model_repo_id: str | None = None,
    ):
        """A `huggingface_hub.DatasetCard` for the record, rendered from `model_cards/templates/curriculum_card.md`.

        Args:
            repo_id (`str`, *optional*): the dataset repo the card will live in (used in the loading snippets).
            license (`str`, *optional*): the licence identifier written into the card's metadata, passed through.
            pretty_name (`str`, *optional*): the card's title.
            model_repo_id (`str`, *optional*): the model repo trained with this curriculum, if pushed.
        """
        from huggingface_hub import DatasetCard, DatasetCardData

        settings = self.settings
        source_dataset = settings.get("source_dataset")
        base_model = settings.get("base_model")
        card_data = DatasetCardData(
            license=license,
            pretty_name=pretty_name or "ZPD curriculum" + (f" of {base_model}" if base_model else ""),
            tags=["hf_zpd", "curriculum", "zone-of-proximal-development"],
            source_datasets=[source_dataset] if source_dataset else None,
            configs=[{"config_name": "default", "data_files": [{"split": "train", "path": RECORD_NAME}]}],
            base_model=base_model,
        )
        context = self.card_context(repo_id)
        return DatasetCard.from_template(
            card_data,
            template_path=str(TEMPLATES / CURRICULUM_CARD_TEMPLATE),
            source_dataset=source_dataset,
            base_model=base_model,
            model_repo_id=model_repo_id,
            **context,
        )

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool | None = None,
        revision: str | None = None,
        commit_message: str = "Upload ZPD curriculum",
        license: str | None = None,
        model_repo_id: str | None = None,
        local_path: str | None = None,
    ):
        """Creates (if needed) the dataset repo `repo_id` and commits the record and its card to it.

        Args:
            repo_id (`str`): the dataset repo, `namespace/name` or `name` (the token's namespace).
            token (`str`, *optional*): a write token; the logged-in one by default.
            private (`bool`, *optional*): make a new repo private.
            revision (`str`, *optional*): the branch to commit to (default `main`).
            commit_message (`str`, *optional*): the commit's title.
            license (`str`, *optional*), model_repo_id (`str`, *optional*): passed to [`CurriculumRecord.card`].
            local_path (`str`, *optional*): a local copy of the record to upload, named in error messages.

        Returns:
            `huggingface_hub.CommitInfo`

        Raises:
            `PermissionError`: the Hub refused the write (no token, or a read-only one).
            `ConnectionError`: the Hub could not be reached, or offline mode is on, or another Hub error.
        """
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi(library_name="hf_zpd", library_version=_package_version())
        try:
            repo_url = api.create_repo(repo_id, repo_type="dataset", token=token, private=private, exist_ok=True)
            repo_id = repo_url.repo_id
            card = self.card(repo_id, license=license, model_repo_id=model_repo_id)
            payload = local_path if local_path is not None else self.to_parquet_bytes()
            operations = [
                CommitOperationAdd(path_in_repo=RECORD_NAME, path_or_fileobj=payload),
                CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=str(card).encode()),
            ]
            return api.create_commit(
                repo_id,
                operations,
                commit_message=commit_message,
                repo_type="dataset",
                token=token,
                revision=revision,
            )
        except Exception as error:  # every failure at the Hub boundary gets one clear message
            raise hub_error(f"push the curriculum to the dataset repo {repo_id!r}", error, local_path) from error


def hub_error(action: str, error: Exception, local_path: str | None = None) -> OSError:
    """A clear `PermissionError` or `ConnectionError` for a failed Hub call, naming the endpoint and the local copy."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    keep = (
        f" The curriculum is saved locally at {local_path}; push it again with trainer.push_curriculum_to_hub() or "
        f"hf_zpd.load_curriculum({local_path!r}).push_to_hub(repo_id)."
        if local_path
        else ""
    )
    endpoint = constants.ENDPOINT
    status = getattr(getattr(error, "response", None), "status_code", None)
    if isinstance(error, HfHubHTTPError) and status in (401, 403):
        return PermissionError(
            f"Could not {action}: the Hub at {endpoint} refused the write ({status}). Pass a token with write access "
            f"(token=..., TrainingArguments.hub_token, the HF_TOKEN variable, or `hf auth login`).{keep}"
        )
    if isinstance(error, OfflineModeIsEnabled):
        return ConnectionError(f"Could not {action}: offline mode is on (HF_HUB_OFFLINE=1).{keep}")
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return ConnectionError(f"Could not {action} at {endpoint} ({type(error).__name__}: {reason}).{keep}")


def load_curriculum(
    path_or_repo_id: str | os.PathLike,
    revision: str | None = None,
    token: str | None = None,
    cache_dir: str | None = None,
) -> CurriculumRecord:
    """Loads a curriculum record from a local folder or file, or from a Hub dataset repo.

    Args:
        path_or_repo_id (`str` or `os.PathLike`):
            A `.parquet` record file, a folder holding `zpd_curriculum.parquet` (a run's output_dir, a checkpoint
            folder, a downloaded repo), or the id of a Hub dataset repo pushed with
            [`ZPDTrainer.push_curriculum_to_hub`]. An existing local path always wins.
        revision (`str`, *optional*), token (`str`, *optional*), cache_dir (`str`, *optional*):
            Passed to `huggingface_hub.hf_hub_download` for a repo id.

    Returns:
        [`CurriculumRecord`]

    Raises:
        `FileNotFoundError`: no record at the local path, or none in the repo.
        `ConnectionError`: the Hub could not be reached (or offline mode is on).
        `ValueError`: the file is damaged or of another format version.
    """
    target = os.fspath(path_or_repo_id)
    if os.path.isdir(target):
        path = os.path.join(target, RECORD_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{target} holds no curriculum record ({RECORD_NAME}). A run writes it into its output_dir at the "
                "end of training and into each checkpoint; trainer.save_curriculum(path) writes one on demand."
            )
        return CurriculumRecord.load(path)
    if os.path.isfile(target):
        return CurriculumRecord.load(target)
    if not _looks_like_repo_id(target):
        raise FileNotFoundError(f"No curriculum record at {target}: no such file or folder (nor a Hub repo id).")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        path = hf_hub_download(
            target, RECORD_NAME, repo_type="dataset", revision=revision, token=token, cache_dir=cache_dir
        )
    except LocalEntryNotFoundError as error:
        # Raised when the Hub could not be asked (unreachable, offline) and the cache has no copy; the cause says why.
        raise hub_error(
            f"download the curriculum {target!r} (not a local path, and not in the cache)", error.__cause__ or error
        ) from error
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
        raise FileNotFoundError(
            f"{target} is not a local path, and the Hub dataset repo {target!r} has no {RECORD_NAME} "
            f"({type(error).__name__}). Check the repo id (a dataset repo, e.g. 'user/run-curriculum')."
        ) from error
    except Exception as error:  # unreachable, offline, or any other Hub failure
        raise hub_error(f"download the curriculum {target!r} (not a local path)", error) from error
    return CurriculumRecord.load(path)


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


def render_model_card_section(card, record: CurriculumRecord, curriculum_repo_id: str | None = None):
    """The model card `card` (a `huggingface_hub.ModelCard`) with the curriculum section added (or replaced), its
    metadata tagged `hf_zpd` and `curriculum`, and the curriculum's dataset repo listed under `datasets`."""
    from huggingface_hub import ModelCard

    data = card.data
    data.tags = list(dict.fromkeys([*(data.tags or []), "hf_zpd", "curriculum"]))
    if curriculum_repo_id is not None:
        existing = data.datasets if isinstance(data.datasets, list) else [data.datasets] if data.datasets else []
        data.datasets = list(dict.fromkeys([*existing, curriculum_repo_id]))
    base_text = card.text.split(MODEL_CARD_MARKER, 1)[0].strip()
    return ModelCard.from_template(
        data,
        template_path=str(TEMPLATES / MODEL_CARD_TEMPLATE),
        base_text=base_text,
        marker=MODEL_CARD_MARKER,
        curriculum_repo_id=curriculum_repo_id,
        **record.card_context(curriculum_repo_id),
    )


# ---- helpers ----


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


def _same_setting(left: Any, right: Any) -> bool:
    if isinstance(left, float) or isinstance(right, float):
        return left is not None and right is not None and math.isclose(float(left), float(right), abs_tol=1e-12)
    return left == right


def _looks_like_repo_id(value: str) -> bool:
    # `name` or `namespace/name`; anything else (a path with more parts, ./, ~, a file name) is a local path.
    return re.fullmatch(r"[\w.\-]+(/[\w.\-]+)?", value) is not None and not value.endswith(".parquet")


def _fmt(value: float | None, pattern: str = "{:.4g}", default: Any = None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "" if default is None else str(default)
    return pattern.format(value)


__all__ = [
    "CurriculumRecord",
    "RECORD_NAME",
    "ScoreHistory",
    "detect_id_column",
    "load_curriculum",
    "read_example_ids",
]
