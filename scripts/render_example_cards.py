"""Renders the example cards in `model_cards/` from a tiny real run (tiny GPT-2 from `tests/builders.py`, 2 CPU cores,
about 10 seconds): the dataset card that `push_curriculum_to_hub` pushes, and the model card with its curriculum
section. The templates are `model_cards/templates/`, shipped in the wheel as the package `hf_zpd.templates`.

    python scripts/render_example_cards.py
"""

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from builders import build_tokenizer, causal_lm_dataset, tiny_gpt2  # noqa: E402
from huggingface_hub import ModelCard  # noqa: E402
from transformers import DataCollatorForSeq2Seq  # noqa: E402

from hf_zpd import ZPDConfig, ZPDTrainer  # noqa: E402
from hf_zpd.cards import dataset_card, with_curriculum_section  # noqa: E402

REPO_ID = "your-name/tiny-zpd"


def main() -> None:
    tokenizer = build_tokenizer()
    dataset = causal_lm_dataset(tokenizer, 48, prompt_tokens=2)
    dataset = dataset.add_column("id", [f"ex-{i:03d}" for i in range(len(dataset))])
    with tempfile.TemporaryDirectory() as output_dir:
        args = ZPDConfig(
            output_dir,
            num_train_epochs=3,
            per_device_train_batch_size=8,
            learning_rate=5e-3,
            replay_fraction=0.25,
            min_zone_fraction=0.2,
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=7,
            hub_model_id=REPO_ID,
        )
        trainer = ZPDTrainer(
            model=tiny_gpt2(len(tokenizer)),
            args=args,
            train_dataset=dataset,
            data_collator=DataCollatorForSeq2Seq(tokenizer),
        )
        trainer.train()
        curriculum_repo = trainer.default_curriculum_repo_id()
        dataset_card(trainer.curriculum, curriculum_repo, license="apache-2.0").save(
            ROOT / "model_cards" / "curriculum_card.md"
        )
        # The card the Trainer writes, with the section added as `create_model_card` does after a push.
        trainer.create_model_card(license="apache-2.0", model_name=REPO_ID.split("/")[1])
        card = ModelCard.load(Path(output_dir) / "README.md")
        card = with_curriculum_section(card, trainer.curriculum, curriculum_repo)
        card.save(ROOT / "model_cards" / "model_card.md")


if __name__ == "__main__":
    main()
