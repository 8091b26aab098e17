"""The curriculum's state: each epoch's zone, the latest scores and the running perplexity, saved with checkpoints.

The state is written into every checkpoint folder as one `zpd_state.safetensors` file (arrays in safetensors, the
rest as JSON in its header: no pickle), through a temporary file and a rename, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
from safetensors.numpy import load as load_safetensors
from safetensors.numpy import save as save_safetensors

from .scoring import SCORE_COLUMNS, ScoreTable

STATE_NAME = "zpd_state.safetensors"
STATE_FORMAT_VERSION = 1


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to `path` through a temporary file in the same folder and an atomic rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        # mkstemp creates the file readable by its owner only; give it the mode `open` would (0666 less the umask),
        # like the Trainer's own files.
        os.chmod(temporary, 0o666 & ~_current_umask())
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def _current_umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


@dataclass
class CurriculumState:
    """Everything a resumed run needs to draw exactly what the uninterrupted run would have drawn.

    Args:
        dataset_size (`int`): the training set's size, checked on resume.
        zones (`dict[int, np.ndarray]`): for each epoch that draws from a zone, its dataset indices.
        latest_scores (`ScoreTable`, *optional*): the last scoring pass.
        latest_scores_epoch (`int`, *optional*): the epoch boundary at which it ran (epochs trained before it).
        previous_scores (`ScoreTable`, *optional*): the scoring pass before, for the learning-progress check.
        running_loss (`float`, *optional*): the moving average of training losses behind the running perplexity.
        epoch_metrics (`dict[int, dict[str, float]]`): the `zpd/*` metrics logged when each epoch's zone was chosen.
        training_pass_scores (`tuple[ScoreTable, np.ndarray]`, *optional*): with `score_source="training_pass"`, the
            training passes' statistics since the last zone and the global step of each row (NaN where none).
    """

    dataset_size: int
    zones: dict[int, np.ndarray] = field(default_factory=dict)
    latest_scores: ScoreTable | None = None
    latest_scores_epoch: int | None = None
    previous_scores: ScoreTable | None = None
    running_loss: float | None = None
    epoch_metrics: dict[int, dict[str, float]] = field(default_factory=dict)
    training_pass_scores: tuple[ScoreTable, np.ndarray] | None = None

    def save(self, folder: str) -> str:
        """Writes the state into `folder` atomically and returns the file's path."""
        arrays: dict[str, np.ndarray] = {f"zone.{epoch}": zone.astype(np.int64) for epoch, zone in self.zones.items()}
        tables = {"latest": self.latest_scores, "previous": self.previous_scores}
        if self.training_pass_scores is not None:
            tables["training_pass"] = self.training_pass_scores[0]
            arrays["training_pass.step"] = self.training_pass_scores[1].astype(np.float64)
        for name, table in tables.items():
            if table is not None:
                for column in SCORE_COLUMNS:
                    arrays[f"{name}.{column}"] = getattr(table, column).astype(np.float64)
        header = {
            "format_version": STATE_FORMAT_VERSION,
            "dataset_size": self.dataset_size,
            "latest_scores_epoch": self.latest_scores_epoch,
            "running_loss": self.running_loss,
            "epoch_metrics": {str(epoch): metrics for epoch, metrics in self.epoch_metrics.items()},
            "vocab_size": {name: table.vocab_size for name, table in tables.items() if table is not None},
        }
        path = os.path.join(folder, STATE_NAME)
        atomic_write_bytes(path, save_safetensors(arrays, metadata={"zpd": json.dumps(header)}))
        return path

    @classmethod
    def load(cls, folder: str, dataset_size: int) -> CurriculumState | None:
        """Reads the state from `folder`; `None` if the folder has none (a checkpoint of the plain Trainer).

        Raises:
            `ValueError`: the file is unreadable, of another format version, or written for a training set of
                another size.
        """
        path = os.path.join(folder, STATE_NAME)
        if not os.path.isfile(path):
            return None
        try:
            with open(path, "rb") as handle:
                payload = handle.read()
            arrays = load_safetensors(payload)
            header = json.loads(_safetensors_metadata(payload)["zpd"])
        except Exception as error:  # any parse failure means a damaged file
            raise ValueError(
                f"The curriculum state {path} is unreadable ({error}). The file is damaged: resume from an earlier "
                f"checkpoint, or delete {STATE_NAME} from this folder to rescore the pool with the restored model."
            ) from error
        if header.get("format_version") != STATE_FORMAT_VERSION:
            raise ValueError(
                f"The curriculum state {path} has format version {header.get('format_version')}, but this hf_zpd "
                f"reads version {STATE_FORMAT_VERSION}. Resume with the hf_zpd version that wrote it."
            )
        if header["dataset_size"] != dataset_size:
            raise ValueError(
                f"The curriculum state {path} was written for a training set of {header['dataset_size']} examples, "
                f"but the training set now has {dataset_size}. Resume with the same train_dataset, or start a new "
                "run (a new output_dir) for the new data."
            )
        tables = {}
        for name, vocab_size in header["vocab_size"].items():
            columns = [arrays[f"{name}.{column}"] for column in SCORE_COLUMNS]
            tables[name] = ScoreTable(*columns, vocab_size=vocab_size)
        zones = {int(key.split(".", 1)[1]): value for key, value in arrays.items() if key.startswith("zone.")}
        return cls(
            dataset_size=dataset_size,
            zones=dict(sorted(zones.items())),
            latest_scores=tables.get("latest"),
            latest_scores_epoch=header["latest_scores_epoch"],
            previous_scores=tables.get("previous"),
            running_loss=header["running_loss"],
            epoch_metrics={int(epoch): metrics for epoch, metrics in header["epoch_metrics"].items()},
            training_pass_scores=(
                (tables["training_pass"], arrays["training_pass.step"]) if "training_pass" in tables else None
            ),
        )


def _safetensors_metadata(payload: bytes) -> dict[str, str]:
    # The safetensors header is an 8-byte little-endian length followed by JSON; "__metadata__" holds our header.
    header_length = int.from_bytes(payload[:8], "little")
    return json.loads(payload[8 : 8 + header_length])["__metadata__"]
