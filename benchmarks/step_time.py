"""Training-step time and peak memory, ZPDTrainer (standard and fused path) against Trainer, on the same batches of a
32k-vocabulary model.

    python benchmarks/step_time.py                   # CPU: prints the table, appends to results/step_time.csv
    python benchmarks/step_time.py --steps 20 --batch 8 --seq 256 --layers 8 --width 512

The model is a GPT-2 built from a config (32,000-token vocabulary, `--layers` blocks of `--width`, 2 of 256 by
default), trained on random tokens with a quarter of each sequence masked with -100. Step time: `training_step`
(forward, the statistics, backward) on the same batches, the three trainers alternating (Trainer, ZPDTrainer,
ZPDTrainer with `fused_cross_entropy=True`), median over steps after a warm-up. Peak memory: each trainer in a fresh
process (the median of `--memory-repeats` processes per arm), peak RSS on CPU (and `torch.cuda.max_memory_allocated`
when a GPU is used). Peak RSS includes what every arm shares (the Python process, torch, the model's weights); "step
peak above baseline" is the high-water mark during the steps minus the RSS just before them (the model built, no
step taken yet), which is the memory the steps themselves need.
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
KINDS = ("plain", "zpd", "fused")
NAMES = {"plain": "Trainer", "zpd": "ZPDTrainer", "fused": "ZPDTrainer, fused_cross_entropy"}
COLUMNS = ["date", "machine", "device", "batch", "seq", "plain_s", "zpd_s", "step_ratio", "rss_ratio"]
COLUMNS += ["fused_s", "fused_step_ratio", "fused_rss_ratio", "plain_rss_mib", "zpd_rss_mib", "fused_rss_mib"]
COLUMNS += ["layers", "width", "steps", "plain_step_peak_mib", "zpd_step_peak_mib", "fused_step_peak_mib"]
COLUMNS += ["step_peak_ratio", "fused_step_peak_ratio", "memory_repeats"]


def build(kind: str, batch: int, seq: int, out: str, layers: int, width: int):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainingArguments

    from hf_zpd import ZPDConfig, ZPDTrainer

    torch.manual_seed(0)
    model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=32_000, n_positions=seq, n_embd=width, n_layer=layers, n_head=4, bos_token_id=0, eos_token_id=0
        )
    )
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arguments = dict(report_to=[], use_cpu=device == "cpu", per_device_train_batch_size=batch)
    if kind == "plain":
        trainer = Trainer(model=model, args=TrainingArguments(out, **arguments))
    else:
        args = ZPDConfig(out, fused_cross_entropy=kind == "fused", **arguments)
        trainer = ZPDTrainer(model=model, args=args)
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


def time_steps(steps: int, batch: int, seq: int, layers: int, width: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        trainers = {kind: build(kind, batch, seq, out, layers, width) for kind in KINDS}
        for _ in range(2):  # warm-up
            for trainer in trainers.values():
                one_step(*trainer)
        times = {kind: [] for kind in KINDS}
        for _ in range(steps):
            for kind, trainer in trainers.items():
                times[kind].append(one_step(*trainer))
        return {kind: statistics.median(values) for kind, values in times.items()} | {"device": trainers["plain"][3]}


def peak_rss_mib() -> float:
    """This process's peak resident set size. Linux's `ru_maxrss` keeps the high-water mark of the process that
    forked it across `execve` (so a child of a large parent reports the parent's peak); `VmHWM` belongs to the
    process's own address space and starts afresh at `execve`."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mib() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


def reset_peak_rss() -> None:
    """Lowers `VmHWM` to the current RSS (Linux 4.0+), so the next peak is the steps' own."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def peak_memory(kind: str, steps: int, batch: int, seq: int, layers: int, width: int) -> None:
    import torch

    with tempfile.TemporaryDirectory() as out:
        trainer, inputs, num_items, device = build(kind, batch, seq, out, layers, width)
        peak_before_steps = peak_rss_mib()  # the reset below forgets it: a process peak while building is kept
        baseline = current_rss_mib()
        reset_peak_rss()
        for _ in range(steps):
            one_step(trainer, inputs, num_items, device)
    peak_of_steps = peak_rss_mib()
    peak = {"rss_mib": max(peak_before_steps, peak_of_steps), "step_peak_mib": peak_of_steps - baseline}
    if device == "cuda":
        peak["cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print(json.dumps(peak))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--width", type=int, default=256, help="hidden size (n_embd)")
    parser.add_argument("--memory-repeats", type=int, default=3, help="fresh processes per arm for peak memory")
    parser.add_argument("--memory-of", choices=KINDS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        peak_memory(args.memory_of, 3, args.batch, args.seq, args.layers, args.width)
        return
    times = time_steps(args.steps, args.batch, args.seq, args.layers, args.width)
    # Peak RSS varies from process to process (when the allocator hands freed blocks back to the system), so each
    # arm is measured in --memory-repeats fresh processes, interleaved, and the median is kept.
    samples = {kind: [] for kind in KINDS}
    for _ in range(args.memory_repeats):
        for kind in KINDS:
            command = [sys.executable, __file__, "--memory-of", kind, "--batch", str(args.batch)]
            command += ["--seq", str(args.seq), "--layers", str(args.layers), "--width", str(args.width)]
            env = dict(os.environ, PYTHONPATH=str(HERE.parent))
            result = subprocess.run(command, capture_output=True, text=True, env=env, check=True)
            samples[kind].append(json.loads(result.stdout.strip().splitlines()[-1]))
    memory = {
        kind: {key: statistics.median(sample[key] for sample in samples[kind]) for key in samples[kind][0]}
        for kind in KINDS
    }
    step_ratio = {kind: times[kind] / times["plain"] for kind in KINDS}
    rss_ratio = {kind: memory[kind]["rss_mib"] / memory["plain"]["rss_mib"] for kind in KINDS}
    step_peak_ratio = {kind: memory[kind]["step_peak_mib"] / memory["plain"]["step_peak_mib"] for kind in KINDS}
    print(
        f"device {times['device']}, GPT-2 {args.layers} layers of {args.width}, vocab 32000, "
        f"batch {args.batch} x {args.seq} tokens, median of {args.steps} steps; "
        f"memory: median of {args.memory_repeats} processes per arm"
    )
    cuda = "cuda_mib" in memory["plain"]
    header = (
        "| trainer | step seconds | step ratio | peak RSS MiB | RSS ratio | step peak above baseline MiB | ratio |"
    )
    print(header + (" peak CUDA MiB |" if cuda else ""))
    print("|---|---|---|---|---|---|---|" + ("---|" if cuda else ""))
    for kind in KINDS:
        line = f"| {NAMES[kind]} | {times[kind]:.4f} | {step_ratio[kind]:.3f} | {memory[kind]['rss_mib']:.0f} | "
        line += f"{rss_ratio[kind]:.3f} | {memory[kind]['step_peak_mib']:.0f} | {step_peak_ratio[kind]:.3f} |"
        line += f" {memory[kind]['cuda_mib']:.0f} |" if cuda else ""
        print(line)
    results = HERE / "results" / "step_time.csv"
    results.parent.mkdir(exist_ok=True)
    rows = list(csv.DictReader(results.open())) if results.exists() else []
    rows.append(
        {
            "date": time.strftime("%Y-%m-%d"),
            "machine": platform.machine(),
            "device": times["device"],
            "batch": args.batch,
            "seq": args.seq,
            "plain_s": f"{times['plain']:.4f}",
            "zpd_s": f"{times['zpd']:.4f}",
            "step_ratio": f"{step_ratio['zpd']:.3f}",
            "rss_ratio": f"{rss_ratio['zpd']:.3f}",
            "fused_s": f"{times['fused']:.4f}",
            "fused_step_ratio": f"{step_ratio['fused']:.3f}",
            "fused_rss_ratio": f"{rss_ratio['fused']:.3f}",
            **{f"{kind}_rss_mib": f"{memory[kind]['rss_mib']:.0f}" for kind in KINDS},
            "layers": args.layers,
            "width": args.width,
            "steps": args.steps,
            **{f"{kind}_step_peak_mib": f"{memory[kind]['step_peak_mib']:.0f}" for kind in KINDS},
            "step_peak_ratio": f"{step_peak_ratio['zpd']:.3f}",
            "fused_step_peak_ratio": f"{step_peak_ratio['fused']:.3f}",
            "memory_repeats": args.memory_repeats,
        }
    )
    # Rewritten whole (older rows lack the later columns), through a temporary file.
    temporary = results.with_suffix(".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, restval="")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(temporary, results)


if __name__ == "__main__":
    main()
