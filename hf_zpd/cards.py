"""The cards: a dataset card for a published curriculum, and the curriculum section of a model card.

Both are rendered from the templates in `model_cards/templates/` (shipped in the wheel as `hf_zpd.templates`), with
the per-epoch table of `epoch_table.py`. Models and datasets are named as a user would write them: a Hub id, or the
folder's name, never an absolute path.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from typing import Any

from ._io import package_homepage, package_version
from .epoch_table import render_epoch_table
from .record import RECORD_FORMAT_VERSION, RECORD_NAME, CurriculumRecord

TEMPLATES = resources.files("hf_zpd.templates")  # model_cards/templates/ in the source tree
CURRICULUM_CARD_TEMPLATE = "curriculum_card.md"
MODEL_CARD_TEMPLATE = "model_card.md"
# Marks the curriculum section of a model card, so that rendering the card twice does not repeat it.
MODEL_CARD_MARKER = "<!-- hf_zpd curriculum section -->"
MODEL_TAGS = ("hf_zpd", "curriculum")
# `datasets` names a dataset loaded from local files after its packaged builder; that says nothing about the data.
_BUILDER_NAMES = {"csv", "json", "parquet", "text", "arrow", "generator", "pandas", "imagefolder", "audiofolder"}
# Folder names that say nothing about the model inside them.
_GENERIC_FOLDERS = {"model", "models", "weights", "snapshot", "final", "output", "out"}


def model_display_name(name_or_path: str | None) -> str | None:
    """A model's name as a user would write it: the Hub id, or the name of its folder.

    A Hugging Face cache snapshot (`.../models--org--name/snapshots/<hash>`) gives `org/name`; a folder with a generic
    name (`model`, `checkpoint-500`, ...) gives its parent's name with it (`my-run/checkpoint-500`).
    """
    if not name_or_path:
        return None
    path = os.path.normpath(os.path.expanduser(os.fspath(name_or_path)))
    if not (os.path.isabs(path) or os.path.exists(path)):
        return os.fspath(name_or_path)  # a Hub id
    cached = re.search(r"models--([^/\\]+)--([^/\\]+)[/\\]snapshots", path)
    if cached:
        return f"{cached.group(1)}/{cached.group(2)}"
    name = os.path.basename(path)
    if name.lower() in _GENERIC_FOLDERS or re.fullmatch(r"checkpoint-\d+", name):
        return f"{os.path.basename(os.path.dirname(path))}/{name}"
    return name


def dataset_display_name(dataset) -> str | None:
    """A training set's name from its `datasets` info (a Hub id, or the name a loader gave it), if it has one."""
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None)
    if not name or name in _BUILDER_NAMES:
        return None
    return name


def _is_repo_id(name: str | None) -> bool:
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    if not name:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def card_context(record: CurriculumRecord, repo_id: str | None = None) -> dict[str, Any]:
    """The values the card templates render: the settings, the weights and the per-epoch table."""
    last = max(record.epochs, default=0)
    return {
        "repo_id": repo_id or "LOCAL_PATH_OR_REPO_ID",
        "hf_zpd_version": package_version(),
        "hf_zpd_url": package_homepage(),
        "format_version": RECORD_FORMAT_VERSION,
        "record_name": RECORD_NAME,
        "id_column": record.id_column,
        "settings": record.settings,
        "weights": ", ".join(f"{w:g}" for w in record.competence_weights),
        "epoch_table": render_epoch_table([], record.epoch_metrics, num_epochs=last),
        "num_rows": sum(len(record.epoch_rows(epoch)["index"]) for epoch in record.epochs),
        "source_dataset": record.settings.get("source_dataset"),
        "base_model": record.settings.get("base_model"),
        "label_audit": label_audit_summary(record),
        "has_data_map": has_data_map(record),
    }


# Rows of the label audit the dataset card shows.
CARD_AUDIT_ROWS = 10


def label_audit_summary(record: CurriculumRecord, rows: int = CARD_AUDIT_ROWS) -> dict[str, Any] | None:
    """The label audit's counts and its first `rows` listed examples, for the card; `None` without an audit (a
    language model, or a record without training passes)."""
    from .label_errors import likely_label_errors

    try:
        ranking = likely_label_errors(record)
    except ValueError:
        return None
    listed = ranking[ranking["listed"]]
    return {"listed": len(listed), "measured": len(ranking), "rows": listed.head(rows).to_dict("records")}


def has_data_map(record: CurriculumRecord) -> bool:
    """Whether the record's training passes cover two epochs or more (a data map needs them)."""
    return len(record.training_passes) >= 2


def data_map_png(record: CurriculumRecord) -> bytes | None:
    """The report's data map of a record, as PNG bytes, for a pushed curriculum; `None` when there is none."""
    if not has_data_map(record):
        return None
    from .data_map import data_map
    from .report import _png, data_map_figure

    summary = label_audit_summary(record, rows=0)
    listed = None
    if summary is not None:
        from .label_errors import likely_label_errors

        listed = likely_label_errors(record, listed_only=True)["index"].to_numpy()
    return _png(data_map_figure(data_map(record), listed))


def dataset_card(
    record: CurriculumRecord,
    repo_id: str | None = None,
    license: str | None = None,
    pretty_name: str | None = None,
    model_repo_id: str | None = None,
):
    """A `huggingface_hub.DatasetCard` for a curriculum record.

    Args:
        record ([`~hf_zpd.record.CurriculumRecord`]): the curriculum.
        repo_id (`str`, *optional*): the dataset repo the card will live in (used in the loading snippets).
        license (`str`, *optional*): the licence identifier written into the card's metadata, passed through.
        pretty_name (`str`, *optional*): the card's title.
        model_repo_id (`str`, *optional*): the model repo trained with this curriculum, if pushed.
    """
    from huggingface_hub import DatasetCard, DatasetCardData

    context = card_context(record, repo_id)
    base_model, source_dataset = context["base_model"], context["source_dataset"]
    card_data = DatasetCardData(
        license=license,
        pretty_name=pretty_name or "ZPD curriculum" + (f" of {base_model}" if base_model else ""),
        tags=[*MODEL_TAGS, "zone-of-proximal-development"],
        # The metadata fields hold Hub ids; a local name (a file or folder) stays in the card's text only.
        source_datasets=[source_dataset] if _is_repo_id(source_dataset) else None,
        configs=[{"config_name": "default", "data_files": [{"split": "train", "path": RECORD_NAME}]}],
        base_model=base_model if _is_repo_id(base_model) else None,
    )
    return DatasetCard.from_template(
        card_data,
        template_path=str(TEMPLATES / CURRICULUM_CARD_TEMPLATE),
        model_repo_id=model_repo_id,
        **context,
    )


def with_curriculum_section(card, record: CurriculumRecord, curriculum_repo_id: str | None = None):
    """The model card `card` (a `huggingface_hub.ModelCard`) with the curriculum section added (or replaced), its
    metadata tagged `hf_zpd` and `curriculum`, and the curriculum's dataset repo listed under `datasets`."""
    from huggingface_hub import ModelCard

    data = card.data
    data.tags = list(dict.fromkeys([*(data.tags or []), *MODEL_TAGS]))
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
        **card_context(record, curriculum_repo_id),
    )
