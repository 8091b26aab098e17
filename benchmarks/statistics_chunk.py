"""Time of `per_example_statistics` by chunk size, against a plain cross-entropy over the same logits.

    python benchmarks/statistics_chunk.py

Logits of a batch of 8 x 128 positions over a 32,000-token vocabulary (fp32, causal alignment, a quarter of each
sequence masked with -100); median of 5 calls after a warm-up. The cross-entropy row is
`torch.nn.functional.cross_entropy` on the same aligned logits (it reshapes, so it copies them): a reference for
what one more pass over the logits costs. Results are appended to benchmarks/results/statistics_chunk.csv.
"""

import csv
import platform
import statistics
import time
from pathlib import Path

import torch

from hf_zpd.statistics import align_causal_labels, per_example_statistics

HERE = Path(__file__).resolve().parent


def median_seconds(function, repeats: int = 5) -> float:
    function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.manual_seed(0)
    logits = torch.randn(8, 128, 32_000)
    labels = torch.randint(0, 32_000, (8, 128))
    labels[:, :32] = -100
    aligned_logits, aligned_labels = align_causal_labels(logits, labels)
    cross_entropy = median_seconds(
        lambda: torch.nn.functional.cross_entropy(aligned_logits.reshape(-1, 32_000), aligned_labels.reshape(-1))
    )
    rows = []
    print(f"threads {torch.get_num_threads()}; plain cross-entropy on the same logits: {cross_entropy * 1000:.1f} ms")
    print("| chunk size | ms | / cross-entropy |")
    print("|---|---|---|")
    for chunk_size in (16, 32, 64, 128, 256, 512):
        seconds = median_seconds(lambda size=chunk_size: per_example_statistics(aligned_logits, aligned_labels, size))
        rows.append((chunk_size, seconds))
        print(f"| {chunk_size} | {seconds * 1000:.1f} | {seconds / cross_entropy:.2f} |")
    results = HERE / "results" / "statistics_chunk.csv"
    results.parent.mkdir(exist_ok=True)
    new = not results.exists()
    with results.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(["date", "machine", "threads", "chunk_size", "seconds", "cross_entropy_seconds"])
        for chunk_size, seconds in rows:
            writer.writerow(
                [
                    time.strftime("%Y-%m-%d"),
                    platform.machine(),
                    torch.get_num_threads(),
                    chunk_size,
                    f"{seconds:.4f}",
                    f"{cross_entropy:.4f}",
                ]
            )


if __name__ == "__main__":
    main()
