"""The record of a GRPO prompt curriculum: every round's prompts, what the curriculum predicted, what the groups gave.

One parquet file, `zpd_grpo_curriculum.parquet`, written into `output_dir` at the end of training and into every
checkpoint (through a temporary file and a rename), with the run's settings as JSON under the key `hf_zpd` of the
schema metadata; read with pyarrow and `json` only (no pickle). One row per (round, drawn prompt):

| column | type | meaning |
|---|---|---|
| `round` | int64 | the generation round (0 = the first) |
| `position` | int64 | the prompt's place in the round's draw |
| `prompt_index` | int64 | the prompt's row in the training dataset |
| `score` | float64 | the zone score it was drawn with: the predicted chance that its group is mixed |
| `history_prediction` | float64 | A1's prediction (its pass-rate history, blended with the population's share) |
| `feature_prediction` | float64 | the composite's prediction (null where no features were computed) |
| `pass_rate_belief` | float64 | the belief's mean pass rate when it was drawn |
| `evidence` | float64 | the decayed number of its groups behind that belief |
| `weight` | float64 | the importance weight of its loss (1 without importance weighting) |
| `cutoff` | int64 | the last round whose groups the draw used |
| `observed` | bool | whether the round was generated (rounds drawn ahead of the end of training are not) |
| `mean_reward`, `reward_std` | float64 | its group's mean and standard deviation of the total reward |
| `mixed` | bool | the group's rewards varied: GRPO's advantage is not zero (TRL's `frac_reward_zero_std`, negated) |
| `scored` | int64 | completions with a reward (a completion every reward function returned None for is left out) |
| `completion_tokens` | float64 | the completion tokens the group generated |
| `step` | int64 | the optimizer step it was generated at |
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ._io import atomic_write_bytes, package_version

GRPO_RECORD_NAME = "zpd_grpo_curriculum.parquet"
GRPO_RECORD_FORMAT = 1
METADATA_KEY = b"hf_zpd"
_PLAN_COLUMNS = ("score", "history_prediction", "feature_prediction", "pass_rate_belief", "evidence", "weight")
_OUTCOME_COLUMNS = ("mean_reward", "reward_std", "completion_tokens")


@dataclass
class PromptRecord:
    """A GRPO run's prompt curriculum as a table (see the module docstring).

    Args:
        settings (`dict`): the run's curriculum settings.
        columns (`dict[str, np.ndarray]`): the rows, column by column.
        source (`str`, *optional*): the file it was read from.
    """

    settings: dict[str, Any]
    columns: dict[str, np.ndarray] = field(default_factory=dict)
    source: str | None = None

    @classmethod
    def from_curriculum(cls, curriculum, settings: dict[str, Any]) -> PromptRecord:
        """The record of a [`~hf_zpd.grpo_curriculum.PromptCurriculum`]."""
        parts: dict[str, list] = {name: [] for name in _names()}
        for round in sorted(curriculum.plans):
            plan = curriculum.plans[round]
            size = plan.prompts.size
            outcome = curriculum.outcomes.get(round)
            parts["round"].append(np.full(size, round, dtype=np.int64))
            parts["position"].append(np.arange(size, dtype=np.int64))
            parts["prompt_index"].append(plan.prompts.astype(np.int64))
            for name, values in zip(
                _PLAN_COLUMNS,
                (plan.scores, plan.history_prediction, plan.feature_prediction, plan.pass_rate, plan.evidence,
                 plan.weights),
                strict=True,
            ):  # fmt: skip
                parts[name].append(np.asarray(values, dtype=np.float64))
            parts["cutoff"].append(np.full(size, plan.cutoff, dtype=np.int64))
            parts["observed"].append(np.full(size, outcome is not None))
            if outcome is None:
                for name in (*_OUTCOME_COLUMNS,):
                    parts[name].append(np.full(size, np.nan))
                parts["mixed"].append(np.zeros(size, dtype=bool))
                parts["scored"].append(np.zeros(size, dtype=np.int64))
                parts["step"].append(np.full(size, -1, dtype=np.int64))
            else:
                summary = outcome.summary
                parts["mean_reward"].append(summary.mean)
                parts["reward_std"].append(summary.std)
                parts["completion_tokens"].append(outcome.tokens.astype(np.float64))
                parts["mixed"].append(summary.mixed)
                parts["scored"].append(summary.count.astype(np.int64))
                parts["step"].append(np.full(size, outcome.step, dtype=np.int64))
        columns = {name: np.concatenate(values) if values else np.zeros(0) for name, values in parts.items()}
        return cls(dict(settings), columns)

    def __len__(self) -> int:
        return int(self.columns["round"].size) if self.columns else 0

    def observed(self) -> dict[str, np.ndarray]:
        """The rows of the rounds that were generated."""
        keep = self.columns["observed"].astype(bool)
        return {name: values[keep] for name, values in self.columns.items()}

    def zero_variance_share(self) -> float:
        """The share of generated groups whose rewards did not vary (no gradient)."""
        rows = self.observed()
        return float(1.0 - rows["mixed"].mean()) if rows["mixed"].size else float("nan")

    def to_arrow(self) -> pa.Table:
        arrays = {}
        for name in _names():
            values = self.columns.get(name, np.zeros(0))
            if name in ("observed", "mixed"):
                arrays[name] = pa.array(np.asarray(values, dtype=bool), pa.bool_())
            elif name in ("round", "position", "prompt_index", "cutoff", "scored", "step"):
                arrays[name] = pa.array(np.asarray(values, dtype=np.int64), pa.int64())
            else:
                arrays[name] = pa.array(np.asarray(values, dtype=np.float64), pa.float64(), from_pandas=True)
        metadata = {"format_version": GRPO_RECORD_FORMAT, "hf_zpd_version": package_version(),
                    "settings": _jsonable(self.settings)}  # fmt: skip
        return pa.table(arrays).replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()})

    def to_pandas(self):
        return self.to_arrow().to_pandas()

    def to_parquet_bytes(self) -> bytes:
        buffer = io.BytesIO()
        pq.write_table(self.to_arrow(), buffer, compression="zstd")
        return buffer.getvalue()

    def save(self, path: str) -> str:
        """Writes the record atomically to `path` (a folder gets `zpd_grpo_curriculum.parquet`); returns the file."""
        path = os.fspath(path)
        if not path.endswith(".parquet"):
            path = os.path.join(path, GRPO_RECORD_NAME)
        atomic_write_bytes(path, self.to_parquet_bytes())
        return path

    @classmethod
    def load(cls, path: str) -> PromptRecord:
        """Reads a record file, or the one in a folder.

        Raises:
            `ValueError`: the file is unreadable, not a GRPO curriculum record, or of an unknown format version.
        """
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, GRPO_RECORD_NAME)
        try:
            table = pq.read_table(path)
            metadata = json.loads((table.schema.metadata or {})[METADATA_KEY])
        except KeyError as error:
            raise ValueError(f"{path} is a parquet file but not an hf_zpd GRPO curriculum record.") from error
        except Exception as error:
            raise ValueError(
                f"The GRPO curriculum record {path} is unreadable ({type(error).__name__}: {error})."
            ) from error
        if metadata.get("format_version") != GRPO_RECORD_FORMAT:
            raise ValueError(
                f"The GRPO curriculum record {path} has format version {metadata.get('format_version')}; this hf_zpd "
                f"reads version {GRPO_RECORD_FORMAT}."
            )
        columns = {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names}
        return cls(metadata["settings"], columns, source=path)

    # ---- the Hub ----

    def dataset_card(self, repo_id: str | None = None, license: str | None = None):
        """A `huggingface_hub.DatasetCard` for the record (`model_cards/templates/grpo_curriculum_card.md`)."""
        from huggingface_hub import DatasetCard, DatasetCardData

        from ._io import package_homepage
        from .cards import TEMPLATES, _is_repo_id, model_display_name

        base_model = model_display_name(self.settings.get("base_model"))
        rows = self.observed()
        card_data = DatasetCardData(
            license=license,
            pretty_name="GRPO prompt curriculum" + (f" of {base_model}" if base_model else ""),
            tags=["hf_zpd", "curriculum", "grpo", "zone-of-proximal-development"],
            configs=[{"config_name": "default", "data_files": [{"split": "train", "path": GRPO_RECORD_NAME}]}],
            base_model=base_model if _is_repo_id(base_model) else None,
        )
        return DatasetCard.from_template(
            card_data,
            template_path=str(TEMPLATES / "grpo_curriculum_card.md"),
            repo_id=repo_id or "LOCAL_PATH_OR_REPO_ID",
            hf_zpd_version=package_version(),
            hf_zpd_url=package_homepage(),
            base_model=base_model,
            settings=self.settings,
            num_rounds=int(np.unique(rows["round"]).size),
            zero_variance=self.zero_variance_share() if rows["round"].size else 0.0,
            tokens=int(np.nansum(rows["completion_tokens"])),
            num_rows=len(self),
            record_name=GRPO_RECORD_NAME,
            format_version=GRPO_RECORD_FORMAT,
        )

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool | None = None,
                    license: str | None = None, local_path: str | None = None):  # fmt: skip
        """Creates (if needed) the dataset repo `repo_id` and commits the record and its card.

        Raises:
            `PermissionError`: the Hub refused the write. `ConnectionError`: it could not be reached (or offline mode
                is on). Both name the local copy when `local_path` is given.
        """
        from huggingface_hub import CommitOperationAdd, HfApi

        from .hub import hub_error

        api = HfApi(library_name="hf_zpd", library_version=package_version())
        try:
            repo_id = api.create_repo(
                repo_id, repo_type="dataset", token=token, private=private, exist_ok=True
            ).repo_id
            operations = [
                CommitOperationAdd(path_in_repo=GRPO_RECORD_NAME, path_or_fileobj=self.to_parquet_bytes()),
                CommitOperationAdd(
                    path_in_repo="README.md", path_or_fileobj=str(self.dataset_card(repo_id, license)).encode()
                ),
            ]
            return api.create_commit(repo_id, operations, commit_message="Upload GRPO prompt curriculum",
                                     repo_type="dataset", token=token)  # fmt: skip
        except Exception as error:  # every failure at the Hub boundary gets one clear message
            raise hub_error(f"push the GRPO curriculum to the dataset repo {repo_id!r}", error, local_path) from error

    @classmethod
    def load_from_hub(cls, path_or_repo_id: str, revision: str | None = None, token: str | None = None):
        """A record from a local folder or file, or from a Hub dataset repo (an existing local path wins).

        Raises:
            `FileNotFoundError`: no record there. `ConnectionError`: the Hub could not be reached.
        """
        target = os.fspath(path_or_repo_id)
        if os.path.exists(target):
            return cls.load(target)
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

        from .hub import hub_error

        try:
            path = hf_hub_download(target, GRPO_RECORD_NAME, repo_type="dataset", revision=revision, token=token)
        except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as error:
            raise FileNotFoundError(
                f"{target} is not a local path, and the Hub dataset repo {target!r} has no {GRPO_RECORD_NAME}."
            ) from error
        except Exception as error:
            raise hub_error(f"download the GRPO curriculum {target!r}", error) from error
        return cls.load(path)

    def round_prompts(self) -> dict[int, np.ndarray]:
        """round -> the prompts it drew, in order (what a replay draws)."""
        rounds, positions, prompts = self.columns["round"], self.columns["position"], self.columns["prompt_index"]
        order = np.lexsort((positions, rounds))
        found: dict[int, list] = {}
        for row in order:
            found.setdefault(int(rounds[row]), []).append(int(prompts[row]))
        return {round: np.asarray(values, dtype=np.int64) for round, values in found.items()}


def _names() -> tuple[str, ...]:
    return ("round", "position", "prompt_index", *_PLAN_COLUMNS, "cutoff", "observed", "mean_reward", "reward_std",
            "mixed", "scored", "completion_tokens", "step")  # fmt: skip


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
