"""Whole `train()` runs, ZPDTrainer against Trainer, on the same data, seed and arguments: what the swap costs.

    python benchmarks/train_time.py                   # 1 and 3 epochs, median of 3; appends to results/train_time.csv
    python benchmarks/train_time.py --epochs 1 --repeats 5

The model is a GPT-2 built from a config (32,000-token vocabulary, `--layers` blocks of `--width`), trained on
`--examples` random sequences of 64 to 256 tokens (a quarter of each masked with -100) in batches of 8, collated by a
hand-written function. Each repetition trains every arm once, the arms interleaved, in one process; the table has the
median wall time of `train()` per arm and its ratio to the Trainer's. The arms: the plain `Trainer`, `ZPDTrainer`
with its defaults (for GPT-2 the fused head), and `ZPDTrainer` on the standard path (`fused_cross_entropy=False`).
The ZPD arms' scoring seconds are the `zpd/scoring_seconds` of their record, and "scoring / epoch" divides one pass by
the plain Trainer's time per epoch.
"""

import argparse
import csv
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = {"plain": "Trainer", "zpd": "ZPDTrainer (defaults)", "standard": "ZPDTrainer, fused_cross_entropy=False"}
COLUMNS = ["date", "machine", "epochs", "examples", "layers", "width", "repeats", "arm", "seconds", "ratio"]
COLUMNS += ["scoring_seconds", "scoring_passes", "scoring_per_epoch"]


def dataset(examples: int):
    import torch
    from datasets import Dataset

    generator = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(examples):
        length = int(torch.randint(64, 257, (1,), generator=generator))
        ids = torch.randint(1, 32_000, (length,), generator=generator).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * (length // 4) + ids[length // 4 :]})
    return Dataset.from_list(rows)


def collate(features):
    """A hand-written collator, as scripts write them: right padding, -100 on the padded labels."""
    import torch

    width = max(len(f["input_ids"]) for f in features)
    ids = torch.zeros((len(features), width), dtype=torch.long)
    labels = torch.full((len(features), width), -100, dtype=torch.long)
    mask = torch.zeros((len(features), width), dtype=torch.long)
    for row, feature in enumerate(features):
        length = len(feature["input_ids"])
        ids[row, :length] = torch.tensor(feature["input_ids"])
        labels[row, :length] = torch.tensor(feature["labels"])
        mask[row, :length] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def train_once(arm: str, data, epochs: int, layers: int, width: int) -> tuple[float, float, int]:
    """Trains one arm from scratch; returns (train() seconds, scoring seconds, scoring passes)."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments
    from transformers.trainer_callback import PrinterCallback

    from hf_zpd import ZPDConfig, ZPDTrainer

    torch.manual_seed(0)
    config = GPT2Config(vocab_size=32_000, n_positions=256, n_embd=width, n_layer=layers, n_head=4)
    model = GPT2LMHeadModel(config)
    with tempfile.TemporaryDirectory() as out:
        values = dict(output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=8, learning_rate=1e-3,
                      save_strategy="no", report_to=[], use_cpu=True, disable_tqdm=True, seed=0,
                      logging_steps=1000)  # fmt: skip
        if arm == "plain":
            trainer = Trainer(model=model, args=TrainingArguments(**values), train_dataset=data, data_collator=collate)
        else:
            fields = {"fused_cross_entropy": False} if arm == "standard" else {}
            trainer = ZPDTrainer(model=model, args=ZPDConfig(**values, **fields), train_dataset=data,
                                 data_collator=collate)  # fmt: skip
        trainer.remove_callback(PrinterCallback)  # the logs would interleave with the table
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    if arm == "plain":
        return seconds, 0.0, 0
    passes = [d.metrics["zpd/scoring_seconds"] for d in trainer.curriculum.epochs.values()
              if "zpd/scoring_seconds" in d.metrics]  # fmt: skip
    return seconds, sum(passes), len(passes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--examples", type=int, default=64, help="64 examples in batches of 8: 8 steps per epoch")
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    data = dataset(args.examples)
    rows = []
    for epochs in args.epochs:
        train_once("plain", data, epochs, args.layers, args.width)  # warm-up, not timed
        runs = {arm: [] for arm in ARMS}
        for _ in range(args.repeats):
            for arm in ARMS:
                runs[arm].append(train_once(arm, data, epochs, args.layers, args.width))
        median = {arm: statistics.median(r[0] for r in runs[arm]) for arm in ARMS}
        print(f"\n{epochs} epoch(s): GPT-2 {args.layers} x {args.width}, vocab 32000, {args.examples} examples of "
              f"64-256 tokens, batch 8, median of {args.repeats} interleaved runs")  # fmt: skip
        print("| trainer | train() seconds | ratio | scoring seconds (passes) | one pass / plain epoch |")
        print("|---|---|---|---|---|")
        for arm, name in ARMS.items():
            scoring = statistics.median(r[1] for r in runs[arm])
            passes = runs[arm][0][2]
            per_epoch = (scoring / passes) / (median["plain"] / epochs) if passes else 0.0
            ratio = median[arm] / median["plain"]
            print(f"| {name} | {median[arm]:.2f} | {ratio:.3f} | {scoring:.2f} ({passes}) | {per_epoch:.3f} |")
            rows.append({"date": time.strftime("%Y-%m-%d"), "machine": platform.machine(), "epochs": epochs,
                         "examples": args.examples, "layers": args.layers, "width": args.width,
                         "repeats": args.repeats, "arm": arm, "seconds": f"{median[arm]:.3f}",
                         "ratio": f"{ratio:.3f}", "scoring_seconds": f"{scoring:.3f}", "scoring_passes": passes,
                         "scoring_per_epoch": f"{per_epoch:.3f}"})  # fmt: skip
    results = HERE / "results" / "train_time.csv"
    results.parent.mkdir(exist_ok=True)
    previous = list(csv.DictReader(results.open())) if results.exists() else []
    temporary = results.with_suffix(".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(previous + rows)
    os.replace(temporary, results)


if __name__ == "__main__":
    main()
