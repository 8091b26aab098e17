"""Training-step time and peak memory, ZPDTrainer against Trainer, on the same batches of a 32k-vocabulary model.

    python benchmarks/step_time.py                   # CPU: prints the table, appends to results/step_time.csv
    python benchmarks/step_time.py --steps 20 --batch 8 --seq 256

The model is a GPT-2 built from a config (32,000-token vocabulary, 2 layers of 256), trained on random tokens with
a quarter of each sequence masked with -100. Step time: `training_step` (forward, the statistics, backward) on the
same batches, the two trainers alternating, median over steps after a warm-up. Peak memory: each trainer in a fresh
process, peak RSS on CPU (and `torch.cuda.max_memory_allocated` when a GPU is used).
"""

import argparse
import csv
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build(kind: str, batch: int, seq: int, out: str):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from hf_zpd import ZPDTrainer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=32_000, n_positions=seq, n_embd=256, n_layer=2, n_head=4))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    args = TrainingArguments(out, report_to=[], use_cpu=device == "cpu", per_device_train_batch_size=batch)
    trainer = (ZPDTrainer if kind == "zpd" else Trainer)(model=model, args=args)
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 32_000, (batch, seq), generator=generator)
    labels = ids.clone()
    labels[:, : seq // 4] = -100  # a masked prompt, as in instruction tuning
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}
    num_items = (labels[:, 1:] != -100).sum()
    trainer.current_gradient_accumulation_steps = 1
    return trainer, inputs, num_items, device


def one_step(trainer, inputs, num_items, device) -> float:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    trainer.training_step(trainer.model, dict(inputs), num_items)
    trainer.model.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def time_steps(steps: int, batch: int, seq: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        plain = build("plain", batch, seq, out)
        ours = build("zpd", batch, seq, out)
        for _ in range(2):  # warm-up
            one_step(*plain), one_step(*ours)
        times = {"plain": [], "zpd": []}
        for _ in range(steps):
            times["plain"].append(one_step(*plain))
            times["zpd"].append(one_step(*ours))
        return {kind: statistics.median(values) for kind, values in times.items()} | {"device": plain[3]}


def peak_memory(kind: str, steps: int, batch: int, seq: int) -> None:
    import torch

    with tempfile.TemporaryDirectory() as out:
        trainer, inputs, num_items, device = build(kind, batch, seq, out)
        for _ in range(steps):
            one_step(trainer, inputs, num_items, device)
    peak = {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "cuda":
        peak["cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--memory-of", choices=["plain", "zpd"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        peak_memory(args.memory_of, 3, args.batch, args.seq)
        return
    times = time_steps(args.steps, args.batch, args.seq)
    memory = {}
    for kind in ("plain", "zpd"):
        command = [sys.executable, __file__, "--memory-of", kind, "--batch", str(args.batch), "--seq", str(args.seq)]
        env = dict(os.environ, PYTHONPATH=str(HERE.parent))
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
        memory[kind] = json.loads(result.stdout.strip().splitlines()[-1])
    step_ratio = times["zpd"] / times["plain"]
    rss_ratio = memory["zpd"]["rss_mib"] / memory["plain"]["rss_mib"]
    print(
        f"device {times['device']}, batch {args.batch} x {args.seq} tokens, vocab 32000, median of {args.steps} steps"
    )
    print("| trainer | step seconds | peak RSS MiB |")
    print("|---|---|---|")
    print(f"| Trainer | {times['plain']:.4f} | {memory['plain']['rss_mib']:.0f} |")
    print(f"| ZPDTrainer | {times['zpd']:.4f} | {memory['zpd']['rss_mib']:.0f} |")
    print(f"step time ratio ZPDTrainer / Trainer: {step_ratio:.3f}")
    print(f"peak RSS ratio ZPDTrainer / Trainer: {rss_ratio:.3f}")
    results = HERE / "results" / "step_time.csv"
    results.parent.mkdir(exist_ok=True)
    new = not results.exists()
    with results.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(
                ["date", "machine", "device", "batch", "seq", "plain_s", "zpd_s", "step_ratio", "rss_ratio"]
            )
        writer.writerow(
            [
                time.strftime("%Y-%m-%d"),
                platform.machine(),
                times["device"],
                args.batch,
                args.seq,
                f"{times['plain']:.4f}",
                f"{times['zpd']:.4f}",
                f"{step_ratio:.3f}",
                f"{rss_ratio:.3f}",
            ]
        )


if __name__ == "__main__":
    main()
