"""The scoring pass: per-example statistics of the training pool, computed without gradient on every process.

Every process runs forward passes over its share of the pool (under FSDP and ZeRO-3 the forward itself is
collective, so no process may sit out), the rows are gathered, and they are scattered into a table by example index.
Scattering by index puts the rows back in dataset order and drops the duplicate rows that the even split pads with.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .indexing import INDEX_COLUMN
from .statistics import ExampleStatistics, competence

SCORE_COLUMNS = ("loss", "confidence", "entropy", "num_tokens")


@dataclass
class ScoreTable:
    """Per-example scores over the whole training set, in dataset order; NaN where an example was not scored.

    Args:
        loss (`np.ndarray` of shape `(N,)`): mean cross-entropy over the example's supervised positions.
        confidence (`np.ndarray` of shape `(N,)`): mean max-probability.
        entropy (`np.ndarray` of shape `(N,)`): mean normalised entropy.
        num_tokens (`np.ndarray` of shape `(N,)`): supervised positions; NaN if unscored, 0 if it has none.
        vocab_size (`int`): V, the size of the output distribution.
        probabilities (`np.ndarray` of shape `(N, V)`, *optional*): a classifier's class probabilities (one position
            per example, at most `MAX_RECORDED_CLASSES` classes); NaN rows where not scored; `None` for other models.
    """

    loss: np.ndarray
    confidence: np.ndarray
    entropy: np.ndarray
    num_tokens: np.ndarray
    vocab_size: int
    probabilities: np.ndarray | None = None

    @classmethod
    def empty(cls, num_examples: int, vocab_size: int = 0) -> ScoreTable:
        columns = [np.full(num_examples, np.nan) for _ in SCORE_COLUMNS]
        return cls(*columns, vocab_size=vocab_size)

    def __len__(self) -> int:
        return self.loss.shape[0]

    def fill(self, index: np.ndarray, stats: ExampleStatistics) -> None:
        """Writes the rows of `stats` at `index`; a repeated index keeps its last row (identical by construction)."""
        self.vocab_size = stats.vocab_size
        self.loss[index] = stats.loss.cpu().numpy()
        self.confidence[index] = stats.confidence.cpu().numpy()
        self.entropy[index] = stats.entropy.cpu().numpy()
        self.num_tokens[index] = stats.num_tokens.cpu().numpy()
        if stats.probabilities is not None:
            width = stats.probabilities.shape[1]
            if self.probabilities is None or self.probabilities.shape[1] != width:
                self.probabilities = np.full((len(self), width), np.nan)
            self.probabilities[index] = stats.probabilities.cpu().numpy()

    def copy(self) -> ScoreTable:
        probabilities = None if self.probabilities is None else self.probabilities.copy()
        columns = (getattr(self, column).copy() for column in SCORE_COLUMNS)
        return ScoreTable(*columns, vocab_size=self.vocab_size, probabilities=probabilities)

    def competence(self, weights: tuple[float, float, float]) -> np.ndarray:
        return competence(self.loss, self.confidence, self.entropy, self.vocab_size, weights)

    def checksum(self) -> list[float]:
        """Cheap fingerprint (per-column sums over scored rows, and the scored count) to compare across processes."""
        scored = ~np.isnan(self.num_tokens)
        columns = [self.loss, self.confidence, self.entropy, self.num_tokens]
        if self.probabilities is not None:
            columns.append(self.probabilities)
        return [
            float(np.nan_to_num(column[scored], nan=-1.0, posinf=-2.0, neginf=-3.0).sum()) for column in columns
        ] + [float(scored.sum())]

    def finite(self) -> np.ndarray:
        """True where every statistic of an example is finite (so it was scored and had supervised positions)."""
        return np.isfinite(self.loss) & np.isfinite(self.confidence) & np.isfinite(self.entropy)


def example_lengths(dataset, names: Sequence[str], length_column: str | None = None) -> np.ndarray | None:
    """Each example's length from the first of the `names` columns a `datasets.Dataset` has: the column itself when
    it is `length_column` (a column of lengths), else each row's length; `None` for other datasets or without one."""
    import datasets

    if not isinstance(dataset, datasets.Dataset):
        return None
    for name in names:
        if name in dataset.column_names:
            column = dataset.with_format(None)[name]
            lengths = column if name == length_column else [len(row) for row in column]
            return np.asarray(lengths, dtype=np.int64)
    return None


def length_grouped_batches(indices: np.ndarray, lengths: Sequence[int] | None, batch_size: int) -> list[list[int]]:
    """Splits `indices` into batches of similar length, longest first, to cut padding in the scoring pass.

    Longest first also means that a batch too large for the device fails at once, not at the end of the pass.
    Without lengths the batches follow `indices` in order.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if lengths is not None:
        lengths = np.asarray(lengths)[indices]
        indices = indices[np.argsort(-lengths, kind="stable")]
    return [indices[i : i + batch_size].tolist() for i in range(0, indices.size, batch_size)]


@contextlib.contextmanager
def preserved_rng_and_mode(model: torch.nn.Module) -> Iterator[None]:
    """Puts `model` in eval mode, and restores its mode and every global RNG state afterwards.

    `DataLoader.__iter__` draws its base seed from the global torch RNG, so a scoring pass between epochs would
    otherwise shift dropout masks and break bitwise-identical resume. `torch.random.fork_rng` restores the CPU and CUDA
    generators; Python's and numpy's are restored here.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    cuda_devices = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=cuda_devices):
            yield
    finally:
        model.train(was_training)
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def run_scoring_pass(
    model: torch.nn.Module,
    dataset: Dataset,
    batches: list[list[int]],
    collate_fn: Callable,
    forward_statistics: Callable[[torch.nn.Module, dict], ExampleStatistics],
    accelerator: Accelerator,
    num_examples: int,
    num_workers: int = 0,
    show_progress: bool = True,
) -> tuple[ScoreTable, float]:
    """Scores `batches` of `dataset` on every process and returns the gathered table and the pass's duration.

    Args:
        model (`torch.nn.Module`): the (possibly wrapped) model; put in eval mode for the pass.
        dataset (`torch.utils.data.Dataset`): the training set, with the [`INDEX_COLUMN`] column.
        batches (`list[list[int]]`): the global list of batches of dataset indices; each process takes its share.
        collate_fn (`Callable`): the Trainer's data collator.
        forward_statistics (`Callable`): runs the model on a collated batch (without the index column) and
            returns its [`ExampleStatistics`].
        accelerator (`accelerate.Accelerator`): splits the batches and gathers the rows.
        num_examples (`int`): the size of the training set (the table's length).
        num_workers (`int`, *optional*, defaults to 0): DataLoader workers.
        show_progress (`bool`, *optional*, defaults to `True`): show a progress bar on the local main process.

    Returns:
        `tuple[ScoreTable, float]`: the table (identical on every process) and the wall-clock seconds.
    """
    start = time.perf_counter()
    table = ScoreTable.empty(num_examples)
    # apply_padding repeats the last batch so that every process runs the same number of forward passes; the
    # repeated rows are dropped when they are scattered by index.
    with accelerator.split_between_processes(batches, apply_padding=True) as local_batches:
        local_batches = list(local_batches)
    loader = DataLoader(dataset, batch_sampler=local_batches, collate_fn=collate_fn, num_workers=num_workers)
    rows = []
    vocab_size = 0
    with preserved_rng_and_mode(model), torch.inference_mode():
        for batch in tqdm(
            loader,
            total=len(local_batches),
            desc="Scoring",
            leave=False,
            disable=not (show_progress and accelerator.is_local_main_process),
        ):
            index = batch.pop(INDEX_COLUMN)
            stats = forward_statistics(model, batch)
            vocab_size = stats.vocab_size
            rows.append(statistics_rows(torch.as_tensor(index, device=stats.loss_sum.device), stats))  # (b, 5 [+ K])
    # Every process holds the same model, so the same row width (the class probabilities, when recorded).
    width = rows[0].shape[1] if rows else 5
    gathered = gather_rows(rows, width, accelerator)
    vocab_size = int(accelerator.gather(torch.tensor([vocab_size], device=accelerator.device)).max().item())
    index = gathered[:, 0].long().numpy()
    table.fill(index, statistics_from_rows(gathered[:, 1:], vocab_size))
    assert_same_on_every_process(table.checksum(), "scoring table", accelerator)
    return table, time.perf_counter() - start


def statistics_rows(index: torch.Tensor, stats: ExampleStatistics, *leading: torch.Tensor) -> torch.Tensor:
    """One row per example: the index, any `leading` columns, the four sums, then the class probabilities (if any),
    as float64 on the statistics' device, to gather across processes."""
    device = stats.loss_sum.device
    columns = [index.to(device).double(), *(column.to(device).double() for column in leading)]
    columns += [stats.loss_sum, stats.confidence_sum, stats.entropy_sum, stats.num_tokens]
    rows = torch.stack(columns, dim=1)
    if stats.probabilities is not None:
        rows = torch.cat([rows, stats.probabilities.to(device).double()], dim=1)
    return rows


def statistics_from_rows(rows: torch.Tensor, vocab_size: int) -> ExampleStatistics:
    """The [`ExampleStatistics`] of gathered rows without their index (and leading) columns: the four sums, then
    the class probabilities when the rows have more columns."""
    probabilities = rows[:, 4:] if rows.shape[1] > 4 else None
    return ExampleStatistics(rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3], vocab_size, probabilities)


def gather_rows(rows: list[torch.Tensor], width: int, accelerator: Accelerator | None) -> torch.Tensor:
    """Every process's rows (column 0: the example index), concatenated in process order, on the CPU, as float64.

    Processes may hold different row counts, so the rows are padded with index -1 to equal shapes for the gather,
    and the padding is dropped after it.
    """
    if accelerator is None:  # one process, no accelerator (a curriculum driven without a Trainer)
        local = torch.cat(rows).cpu() if rows else torch.zeros((0, width), dtype=torch.float64)
        return local[local[:, 0] >= 0]
    device = accelerator.device
    local = torch.cat(rows).to(device) if rows else torch.zeros((0, width), dtype=torch.float64, device=device)
    if accelerator.num_processes > 1:
        local = accelerator.gather(accelerator.pad_across_processes(local, dim=0, pad_index=-1))
    local = local.cpu()
    return local[local[:, 0] >= 0]


class TrainingPassScores:
    """The per-example statistics of the training forward passes, the latest one per example.

    Each training micro-batch adds rows (index, global step, loss sum, confidence sum, entropy sum, tokens, and a
    classifier's class probabilities) on its own process; [`~TrainingPassScores.merge`] gathers them from every
    process into one table, in which an example keeps the row of its latest step (of the last process, for an example
    drawn twice in the same step), so every process holds the same table. The curriculum keeps one per epoch: each
    example's statistics when the epoch drew it, before the step that trained on it.

    Args:
        num_examples (`int`): the training set's size.
    """

    def __init__(self, num_examples: int):
        self.table = ScoreTable.empty(num_examples)
        self.step = np.full(num_examples, np.nan)
        self.pending: list[torch.Tensor] = []

    @property
    def width(self) -> int:
        """The columns of a pending row: index, step, the four sums, and the class probabilities if recorded."""
        probabilities = self.table.probabilities
        if self.pending:
            return self.pending[0].shape[1]
        return 6 + (0 if probabilities is None else probabilities.shape[1])

    def add(self, index: torch.Tensor, step: int, stats: ExampleStatistics) -> None:
        """Keeps one micro-batch's rows on their device (no host sync per step)."""
        self.table.vocab_size = stats.vocab_size
        steps = torch.full_like(stats.loss_sum, float(step))
        self.pending.append(statistics_rows(index, stats, steps))  # (b, 6 [+ K])

    def merge(self, accelerator: Accelerator | None) -> None:
        """Gathers every process's pending rows into the table. Collective: every process must call it (`None`: one
        process, no accelerator)."""
        rows = gather_rows(self.pending, self.width, accelerator)
        self.pending = []
        vocab_size = self.table.vocab_size
        if accelerator is not None:
            vocab_size = int(accelerator.gather(torch.tensor([vocab_size], device=accelerator.device)).max())
        rows = rows[torch.argsort(rows[:, 1], stable=True)]  # by step; the last write to an index wins
        index = rows[:, 0].long().numpy()
        self.table.fill(index, statistics_from_rows(rows[:, 2:], vocab_size))
        self.step[index] = rows[:, 1].numpy()
        self.table.vocab_size = vocab_size

    def num_scored(self) -> int:
        return int((~np.isnan(self.step)).sum())

    def clear(self) -> None:
        self.__init__(len(self.table))


def dataset_sketch(dataset) -> list[float]:
    """The size and a hash of three rows: enough to catch processes that built different training sets."""
    size = len(dataset)
    rows = repr([dataset[index] for index in sorted({0, size // 2, size - 1})])
    return [float(size), float(int(hashlib.sha256(rows.encode()).hexdigest()[:12], 16))]


def assert_same_on_every_process(values: list[float], what: str, accelerator: Accelerator) -> None:
    """Raises on every process if `values` differ between processes, instead of letting them draw different epochs.

    The draw is a pure function of the scores, so processes holding different tables would silently train on
    different curricula (and, under DDP, hang or diverge).
    """
    if accelerator.num_processes == 1:
        return
    local = torch.tensor(values, dtype=torch.float64, device=accelerator.device)
    gathered = accelerator.gather(local[None, :]).cpu()
    if not bool((gathered == gathered[0]).all()):
        raise RuntimeError(
            f"The {what} differs between processes (checksums per process: {gathered.tolist()}). Every process "
            "must hold the same training set in the same order: build it the same way on every process, with a "
            "fixed seed for any shuffle."
        )
