"""The label audit, measured against the truth and against cleanlab: how well each method finds flipped labels, and at
what compute.

For every noisy task of the study (`tweets_noise20`, `tweets_noise40`, `bible_noise20`, `bible_noise40`: the flipped
labels are the truth) and seed, from the study's runs of the default (`zpd-audit`, whose training passes
`examples/study.py` saved) and from a 5-fold cross-validation run here:

| method | what ranks the examples | its list | compute (trainings of the task's recipe) |
|---|---|---|---|
| `run` | hf_zpd's audit: 1 - the mean over the training passes of p(label) | the model prefers another class | 1 (the run itself) |
| `run_first_epoch` | the first epoch's training-pass loss (out of sample when measured) | its predicted class is not the label | 1 |
| `cleanlab_first_epoch` | cleanlab on the first epoch's training-pass probabilities (self-confidence) | `find_label_issues` | 1 |
| `cleanlab_run` | cleanlab on the training passes' mean probabilities (`method="confident_learning"`) | `find_label_issues` | 1 |
| `cleanlab_cv` | cleanlab's recipe: 5-fold out-of-sample probabilities (self-confidence) | `find_label_issues` | 5 trainings on 4/5 of the set (4 runs' worth) + a forward pass over the set |

Metrics: the ROC AUC of the ranking for the flipped labels, the list's size, precision and recall, and the precision
and recall of each ranking cut at the size of cleanlab's 5-fold list.

    .venv/bin/python examples/label_audit.py --tasks tweets_noise40 --seeds 0 1 2   # the cross-validation runs (cached)
    .venv/bin/python examples/label_audit.py --report                               # audit.md and audit.csv

The cross-validation trains the plain Trainer with the study's recipe (the task's tuned learning rate, epochs and
batch) on each fold's other 4/5, stratified by the given labels, and predicts the held-out fifth; its probabilities are
cached in `examples/results/audit/<task>/cv-seed<seed>.npz`.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

STUDY = os.path.join("examples", "results", "study")
RESULTS = os.path.join("examples", "results", "audit")
NOISY_TASKS = ("tweets_noise20", "tweets_noise40", "bible_noise20", "bible_noise40")
AUDIT_ARM = "zpd-audit"
FOLDS = 5


def cross_validated_probabilities(task_name: str, seed: int, options) -> tuple[np.ndarray, dict]:
    """cleanlab's recipe: out-of-sample class probabilities of every training example from `FOLDS` trainings of the
    study's recipe, each on the other folds (stratified by the given labels); cached."""
    from sklearn.model_selection import StratifiedKFold
    from study import TASKS, classification_task, read_runs, tuned_rate
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments, set_seed
    from transformers.trainer_callback import PrinterCallback

    path = os.path.join(options.output_dir, task_name, f"cv-seed{seed}.npz")
    if os.path.isfile(path):
        cached = np.load(path)
        return cached["probabilities"], json.loads(str(cached["cost"]))
    task = TASKS[task_name]
    rate = tuned_rate(read_runs(os.path.join(options.study_dir, task_name, "runs.jsonl")), task_name)
    if rate is None:
        raise SystemExit(f"No tuned learning rate for {task_name}: run its uniform arm in examples/study.py first.")
    _, tokenizer, train, _, labels, _ = classification_task(task, seed, options)
    probabilities = np.full((len(train), int(labels.max()) + 1), np.nan)
    folds = StratifiedKFold(n_splits=FOLDS, shuffle=True, random_state=seed)
    cost = {"trained_examples": 0, "predicted_examples": 0, "seconds": 0.0, "learning_rate": rate}
    started = time.perf_counter()
    for fold, (fit, held_out) in enumerate(folds.split(np.zeros(len(labels)), labels)):
        set_seed(seed * 100 + fold)
        model, _, _, _, _, _ = classification_task(task, seed, options)
        args = TrainingArguments(output_dir=tempfile.mkdtemp(prefix="hf_zpd_cv_"), learning_rate=rate,
                                 per_device_train_batch_size=task.batch_size, per_device_eval_batch_size=64,
                                 num_train_epochs=task.epochs, warmup_steps=0.1, lr_scheduler_type="linear",
                                 save_strategy="no", report_to="none", seed=seed * 100 + fold, use_cpu=True,
                                 disable_tqdm=True, dataloader_pin_memory=False)  # fmt: skip
        trainer = Trainer(model=model, args=args, train_dataset=train.select(fit.tolist()),
                          data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
        trainer.remove_callback(PrinterCallback)
        output = trainer.train()
        logits = trainer.predict(train.select(held_out.tolist())).predictions
        logits = logits - logits.max(axis=1, keepdims=True)
        probabilities[held_out] = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
        cost["trained_examples"] += output.global_step * task.batch_size
        cost["predicted_examples"] += len(held_out)
        print(f"[audit] {task_name} seed {seed} fold {fold} done", flush=True)
    cost["seconds"] = time.perf_counter() - started
    os.makedirs(os.path.dirname(path), exist_ok=True)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, probabilities=probabilities, cost=json.dumps(cost))
    from hf_zpd._io import atomic_write_bytes

    atomic_write_bytes(path, buffer.getvalue())
    return probabilities, cost


def _auc(scores: np.ndarray, truth: np.ndarray) -> float:
    from hf_zpd.pass_rate import rank_auc

    return rank_auc(scores, truth)


def _cut(scores: np.ndarray, truth: np.ndarray, size: int) -> tuple[float, float]:
    """Precision and recall of the `size` highest scores (ties to the lower index)."""
    order = np.lexsort((np.arange(scores.size), -np.nan_to_num(scores, nan=-np.inf)))[:size]
    hits = truth[order].sum()
    return (float(hits / size) if size else math.nan), float(hits / truth.sum())


def methods(inputs: dict, cv: np.ndarray | None) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """method -> (score per example, list mask, trainings of compute)."""
    import cleanlab.filter
    import cleanlab.rank

    from hf_zpd.label_errors import audit_from_probabilities, averaged_probabilities

    labels = inputs["labels"]
    epochs = [int(e) for e in inputs["epochs"]]
    passes = np.stack([inputs[f"probabilities_{e}"].astype(np.float64) for e in epochs])
    mean = averaged_probabilities(passes)
    first = passes[0]
    run = audit_from_probabilities(mean, labels)
    first_epoch = audit_from_probabilities(first, labels)
    found = {
        "run": (run.score, run.listed, 1.0),
        "run_first_epoch": (first_epoch.score, first_epoch.listed, 1.0),
    }
    for name, probabilities in (("cleanlab_first_epoch", first), ("cleanlab_run", mean)):
        quality = cleanlab.rank.get_label_quality_scores(labels, probabilities)
        found[name] = (1.0 - quality, cleanlab.filter.find_label_issues(labels, probabilities), 1.0)
    if cv is not None:
        quality = cleanlab.rank.get_label_quality_scores(labels, cv)
        # Five trainings, each on 4/5 of the set (four runs' worth of examples), plus predicting the set once.
        found["cleanlab_cv"] = (1.0 - quality, cleanlab.filter.find_label_issues(labels, cv), float(FOLDS))
    return found


def evaluate(options) -> list[dict]:
    rows = []
    for task in NOISY_TASKS:
        folder = os.path.join(options.study_dir, task, "audit")
        if not os.path.isdir(folder):
            continue
        for name in sorted(os.listdir(folder)):
            if not name.startswith(AUDIT_ARM + "-seed"):
                continue
            seed = int(name.removeprefix(AUDIT_ARM + "-seed").removesuffix(".npz"))
            inputs = dict(np.load(os.path.join(folder, name)))
            truth = inputs["wrong"].astype(bool)
            cv_path = os.path.join(options.output_dir, task, f"cv-seed{seed}.npz")
            cv = np.load(cv_path)["probabilities"] if os.path.isfile(cv_path) else None
            found = methods(inputs, cv)
            reference_size = int(found["cleanlab_cv"][1].sum()) if "cleanlab_cv" in found else None
            for method, (score, listed, trainings) in found.items():
                row = {"task": task, "seed": seed, "method": method, "flipped": int(truth.sum()),
                       "auc": _auc(score, truth), "list_size": int(listed.sum()),
                       "list_precision": float(truth[listed].mean()) if listed.any() else math.nan,
                       "list_recall": float(truth[listed].sum() / truth.sum()), "trainings": trainings}  # fmt: skip
                if reference_size:
                    row["precision_at_cv_size"], row["recall_at_cv_size"] = _cut(score, truth, reference_size)
                    row["cv_list_size"] = reference_size
                rows.append(row)
    return rows


def write_report(options) -> str:
    from hf_zpd._io import atomic_write_bytes

    rows = evaluate(options)
    if not rows:
        raise SystemExit(f"No audit inputs under {options.study_dir}/<task>/audit/: run the study's zpd-audit arm.")
    buffer = io.StringIO()
    columns = sorted(
        {key for row in rows for key in row}, key=lambda k: list(rows[0]).index(k) if k in rows[0] else 99
    )
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_bytes(os.path.join(options.output_dir, "audit.csv"), buffer.getvalue().encode())
    lines = ["# The label audit against flipped labels", "",
             "Every number from `audit.csv`; regenerate with `.venv/bin/python examples/label_audit.py --report`. "
             "Means ± sample standard deviation over seeds (count in brackets). `trainings`: the compute of each "
             "method in trainings of the task's recipe. The methods: `run` (the run's audit, hf_zpd's default), "
             "`run_first_epoch` (epoch 1's training passes alone), `cleanlab_run` and `cleanlab_first_epoch` "
             "(cleanlab's `find_label_issues` on those probabilities), `cleanlab_cv` (cleanlab on 5-fold "
             "out-of-sample probabilities). `*_at_cv_size`: the ranking cut at the size of cleanlab_cv's list.", ""]  # fmt: skip
    command = os.path.join(options.output_dir, "command.txt")
    if os.path.isfile(command):
        lines += ["Commands (from the repository root):", "", "```bash", open(command).read().strip(), "```", ""]
    metrics = ("auc", "list_size", "list_precision", "list_recall", "precision_at_cv_size", "recall_at_cv_size")
    for task in NOISY_TASKS:
        mine = [row for row in rows if row["task"] == task]
        if not mine:
            continue
        lines += [f"## {task}", "", "| method | trainings | " + " | ".join(metrics) + " |",
                  "|---|---|" + "---|" * len(metrics)]  # fmt: skip
        for method in dict.fromkeys(row["method"] for row in mine):
            chosen = [row for row in mine if row["method"] == method]
            cells = []
            for metric in metrics:
                values = np.array([row.get(metric, math.nan) for row in chosen], dtype=float)
                values = values[np.isfinite(values)]
                if not values.size:
                    cells.append("—")
                    continue
                digits = 0 if metric == "list_size" else 3
                spread = f" ± {values.std(ddof=1):.{digits}f}" if values.size > 1 else ""
                cells.append(f"{values.mean():.{digits}f}{spread} ({values.size})")
            lines.append(f"| {method} | {chosen[0]['trainings']:.0f} | " + " | ".join(cells) + " |")
        lines.append("")
    path = os.path.join(options.output_dir, "audit.md")
    atomic_write_bytes(path, "\n".join(lines).encode())
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", nargs="+", default=list(NOISY_TASKS), choices=NOISY_TASKS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--report", action="store_true", help="Write audit.md and audit.csv from what is there.")
    parser.add_argument("--study_dir", default=STUDY)
    parser.add_argument("--output_dir", default=RESULTS)
    parser.add_argument("--kjv_dir", default="/tmp/kjv")
    parser.add_argument("--num_threads", type=int, default=1)
    options = parser.parse_args(argv)
    options.model_name_or_path = options.train_size = options.eval_size = options.max_length = None
    if options.report:
        print(write_report(options))
        return 0
    import torch

    torch.set_num_threads(options.num_threads)
    for task in options.tasks:
        for seed in options.seeds:
            cross_validated_probabilities(task, seed, options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
