"""What ZPDGRPOTrainer's selection costs per step, against TRL's GRPOTrainer with the same arguments and seed.

    python benchmarks/grpo_step_time.py                 # reverse, 60 steps, median of 3; appends to results/grpo_step_time.csv
    python benchmarks/grpo_step_time.py --task add --steps 40 --repeats 5

The policy and prompts are the GRPO study's (`examples/grpo_tasks.py`: its cached warm start, 16 prompts x 8
completions a step). Each repetition trains every arm once, interleaved, in one process, on `--threads` threads; the
table has the median seconds per step of `train()` and the ratio to the plain trainer's. The arms: TRL's `GRPOTrainer`,
`ZPDGRPOTrainer` with its defaults (the composite: one forward pass over 4 x 16 candidate prompts per round), and
with `zone_signal="pass_rate"` (A1: no forward pass). Steps differ in what they generate (the arms draw other
prompts, so other completion lengths), so the table also has the completion tokens per step and the seconds per
thousand of them.
"""

import argparse
import csv
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "examples"))
ARMS = {"plain": "GRPOTrainer", "zpd": "ZPDGRPOTrainer (composite)", "a1": "ZPDGRPOTrainer (pass_rate, A1)"}
COLUMNS = ["date", "machine", "task", "steps", "repeats", "threads", "arm", "seconds_per_step", "ratio",
           "tokens_per_step", "seconds_per_1k_tokens"]  # fmt: skip


def one_run(arm: str, task: str, steps: int, seed: int) -> tuple[float, float]:
    from grpo_tasks import PRESETS, TASKS, build_datasets, exact_match_reward, load_warm_start
    from trl import GRPOConfig, GRPOTrainer

    from hf_zpd import ZPDGRPOConfig, ZPDGRPOTrainer

    preset = PRESETS[task]
    model, tokenizer, _ = load_warm_start(preset.warm, verbose=False)
    pool = build_datasets(preset.warm, preset.pool)["pool"]
    tokens = []

    def reward(completions, completion_ids, **kwargs):
        tokens.append(sum(len(ids) for ids in completion_ids))
        return exact_match_reward(completions, **kwargs)

    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if arm == "plain" else (ZPDGRPOConfig, ZPDGRPOTrainer)
    extra = {"zone_signal": "pass_rate"} if arm == "a1" else {}
    args = config_class(output_dir=str(HERE / ".bench_out"), bf16=False, use_cpu=True, report_to="none",
                        gradient_checkpointing=False, per_device_train_batch_size=128, num_generations=8,
                        max_completion_length=TASKS[preset.warm.task].max_completion_length, temperature=1.0, learning_rate=preset.learning_rate, max_steps=steps,
                        logging_steps=steps, save_strategy="no", seed=seed, disable_tqdm=True, **extra)  # fmt: skip
    trainer = trainer_class(
        model=model, reward_funcs=reward, args=args, train_dataset=pool, processing_class=tokenizer
    )
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    return seconds / steps, sum(tokens) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", default="reverse", choices=["reverse", "add"])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default=str(HERE / "results" / "grpo_step_time.csv"))
    options = parser.parse_args()
    import torch

    torch.set_num_threads(options.threads)
    measured = {arm: [] for arm in ARMS}
    for repeat in range(options.repeats):
        for arm in ARMS:
            measured[arm].append(one_run(arm, options.task, options.steps, seed=repeat))
    plain = statistics.median(step for step, _ in measured["plain"])
    rows = []
    for arm, label in ARMS.items():
        step = statistics.median(s for s, _ in measured[arm])
        tokens = statistics.median(t for _, t in measured[arm])
        rows.append({"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} {os.cpu_count()} cores",
                     "task": options.task, "steps": options.steps, "repeats": options.repeats,
                     "threads": options.threads, "arm": label, "seconds_per_step": round(step, 4),
                     "ratio": round(step / plain, 3), "tokens_per_step": round(tokens, 1),
                     "seconds_per_1k_tokens": round(1000 * step / tokens, 4)})  # fmt: skip
    new_file = not os.path.isfile(options.output)
    with open(options.output, "a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        if new_file:
            writer.writeheader()
        writer.writerows(rows)
    for row in rows:
        print(f"{row['arm']:34s} {row['seconds_per_step']:.4f} s/step  x{row['ratio']:.3f}  "
              f"{row['tokens_per_step']:.0f} tokens/step  {row['seconds_per_1k_tokens']:.4f} s per 1k tokens")  # fmt: skip


if __name__ == "__main__":
    main()
