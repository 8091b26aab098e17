"""Times the scoring pass over the same pool with 1 and with 2 processes (torchrun, gloo on CPU) and prints the ratio.

    python benchmarks/scoring_processes.py                 # both runs, then the table
    python benchmarks/scoring_processes.py --pool 2048     # a larger pool

Each configuration uses the machine's cores once: 1 process x N threads against 2 processes x N/2 threads, so
the ratio shows what sharding the pass over processes buys on the same hardware, gathers included. The model is a
GPT-2 built from a config (a 32k vocabulary, 4 layers); the data are random token sequences of 16 to 128 tokens.
Results are appended to benchmarks/results/scoring_processes.csv.
"""

import argparse
import csv
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def worker(pool: int, repeats: int, out: str) -> None:
    import numpy as np
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import DataCollatorForSeq2Seq, GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    from hf_zpd import ZPDConfig, ZPDTrainer

    rng = np.random.default_rng(0)
    vocab = 32_000
    lengths = rng.integers(16, 129, size=pool)
    ids = [rng.integers(1, vocab, size=int(n)).tolist() for n in lengths]
    dataset = Dataset.from_dict({"input_ids": ids, "attention_mask": [[1] * len(x) for x in ids], "labels": ids})
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"[PAD]": 0}, unk_token="[PAD]")), pad_token="[PAD]"
    )
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_positions=128, n_embd=128, n_layer=4, n_head=4))
    args = ZPDConfig(out, use_cpu=True, report_to=[], disable_tqdm=True, per_device_eval_batch_size=32)
    trainer = ZPDTrainer(
        model=model, args=args, train_dataset=dataset, data_collator=DataCollatorForSeq2Seq(tokenizer)
    )
    trainer.get_train_dataloader()  # builds the indexed dataset and the collator the pass uses
    seconds = []
    for _ in range(repeats + 1):  # the first pass warms up
        start = time.perf_counter()
        table, _ = trainer._score_pool(1)
        seconds.append(time.perf_counter() - start)
    assert not np.isnan(table.loss).any()
    if trainer.args.process_index == 0:
        Path(out, "result.json").write_text(
            json.dumps({"world_size": trainer.args.world_size, "seconds": seconds[1:]})
        )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(processes: int, threads: int, pool: int, repeats: int) -> dict:
    with tempfile.TemporaryDirectory() as out:
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(HERE.parent))
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command += ["--master_addr", "127.0.0.1", "--master_port", str(free_port())]
        command += [__file__, "--worker", "--pool", str(pool), "--repeats", str(repeats), "--out", out]
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            sys.exit(f"the {processes}-process run failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return json.loads(Path(out, "result.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.pool, args.repeats, args.out)
        return
    cores = os.cpu_count() or 2
    one = launch(1, cores, args.pool, args.repeats)
    two = launch(2, max(cores // 2, 1), args.pool, args.repeats)
    assert one["world_size"] == 1 and two["world_size"] == 2, (one, two)
    one_s, two_s = statistics.median(one["seconds"]), statistics.median(two["seconds"])
    print(f"pool {args.pool} examples, {cores} cores, median of {args.repeats} passes")
    print("| processes | threads each | seconds | examples/s |")
    print("|---|---|---|---|")
    print(f"| 1 | {cores} | {one_s:.2f} | {args.pool / one_s:.0f} |")
    print(f"| 2 | {max(cores // 2, 1)} | {two_s:.2f} | {args.pool / two_s:.0f} |")
    print(f"speed-up of 2 processes over 1: {one_s / two_s:.2f}x")
    results = HERE / "results" / "scoring_processes.csv"
    results.parent.mkdir(exist_ok=True)
    new = not results.exists()
    with results.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(
                ["date", "machine", "cores", "pool", "seconds_1_process", "seconds_2_processes", "speedup"]
            )
        writer.writerow(
            [
                time.strftime("%Y-%m-%d"),
                platform.processor() or platform.machine(),
                cores,
                args.pool,
                f"{one_s:.3f}",
                f"{two_s:.3f}",
                f"{one_s / two_s:.3f}",
            ]
        )


if __name__ == "__main__":
    main()
