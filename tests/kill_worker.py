"""A training run for `tests/test_reliability.py`, started as a subprocess that the test may SIGKILL.

    python tests/kill_worker.py OUTPUT_DIR RESULT_JSON [--pause-in-scoring N | --pause-in-checkpoint N] [--resume]

`--pause-in-scoring N` writes OUTPUT_DIR/paused and sleeps inside the N-th scoring pass (counting from 1; the first is
the learnability guard's baseline before training);
`--pause-in-checkpoint N` does the same inside the N-th checkpoint save, after the model weights are written and
before the optimizer, RNG and trainer state: the test kills the process there. `--resume` resumes from the last
complete checkpoint. On success the final weights' digest, the zones and every epoch's draws go to RESULT_JSON.
"""

import argparse
import hashlib
import json
import os
import time
from pathlib import Path

import torch
from builders import build_tokenizer, causal_lm_dataset, tiny_gpt2
from transformers import DataCollatorForSeq2Seq

from hf_zpd import ZPDConfig, ZPDTrainer


class PausingTrainer(ZPDTrainer):
    """Stops, with a marker file, at a chosen point so that the test can kill it exactly there."""

    pause_in_scoring = 0
    pause_in_checkpoint = 0
    scoring_passes = 0
    checkpoints = 0

    def _pause(self) -> None:
        Path(self.args.output_dir, "paused").write_text(str(os.getpid()))
        time.sleep(600)

    def _score_pool(self, indices):
        self.scoring_passes += 1
        if self.scoring_passes == self.pause_in_scoring:
            original = self._forward_statistics

            def forward_then_pause(model, inputs):
                stats = original(model, inputs)
                self._pause()  # in the middle of the pass: one batch scored
                return stats

            self._forward_statistics = forward_then_pause
        return super()._score_pool(indices)

    def _save_optimizer_and_scheduler(self, output_dir):
        self.checkpoints += 1
        if self.checkpoints == self.pause_in_checkpoint:
            self._pause()  # the curriculum state and the model weights are written, the rest is not
        super()._save_optimizer_and_scheduler(output_dir)


def digest(model) -> str:
    hasher = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        hasher.update(name.encode())
        hasher.update(tensor.detach().contiguous().numpy().tobytes())
    return hasher.hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("result")
    parser.add_argument("--pause-in-scoring", type=int, default=0)
    parser.add_argument("--pause-in-checkpoint", type=int, default=0)
    parser.add_argument("--resume", action="store_true")
    options = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    args = ZPDConfig(
        output_dir=options.output_dir,
        num_train_epochs=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=4,
        learning_rate=5e-3,
        save_strategy="steps",
        save_steps=4,
        logging_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=3,
        replay_fraction=0.2,
    )
    trainer = PausingTrainer(
        model=tiny_gpt2(len(tokenizer), seed=1),
        args=args,
        train_dataset=causal_lm_dataset(tokenizer, 48, prompt_tokens=2),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )
    trainer.pause_in_scoring = options.pause_in_scoring
    trainer.pause_in_checkpoint = options.pause_in_checkpoint
    trainer.train(resume_from_checkpoint=True if options.resume else None)
    result = {
        "digest": digest(trainer.model),
        "zones": {epoch: zone.tolist() for epoch, zone in trainer.curriculum.zones.items()},
        "draws": {epoch: draw.counts.tolist() for epoch, draw in trainer.curriculum.epochs.items()},
        "global_step": trainer.state.global_step,
    }
    Path(options.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
