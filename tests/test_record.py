"""The curriculum as data: the record file, replay, the curated dataset, cards, and the Hub round trip over real HTTP
(the project's own test server, tests/hub_server.py)."""

import json
import math
import os
import re
import socket
from pathlib import Path

import datasets
import huggingface_hub
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from builders import assert_bitwise_equal, causal_lm_dataset, final_weights, tiny_gpt2
from hub_server import HubServer
from huggingface_hub import DatasetCard, ModelCard
from transformers import DataCollatorForSeq2Seq

import hf_zpd
from hf_zpd import CurriculumRecord, EpochDraw, ZPDConfig, ZPDTrainer, load_curriculum
from hf_zpd.cards import dataset_card
from hf_zpd.hub import push_curriculum
from hf_zpd.record import METADATA_KEY, RECORD_FORMAT_VERSION, RECORD_NAME
from hf_zpd.scoring import ScoreTable
from hf_zpd.state import STATE_NAME

NUM_EXAMPLES = 48
DATA = Path(__file__).resolve().parent / "data"


def config(tmp_path, name="run", **overrides) -> ZPDConfig:
    values = dict(
        output_dir=str(tmp_path / name),
        num_train_epochs=3,
        per_device_train_batch_size=8,
        per_device_eval_batch_size=16,
        learning_rate=5e-3,
        logging_steps=2,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        seed=7,
        replay_fraction=0.25,
        min_zone_fraction=0.2,
    )
    values.update(overrides)
    return ZPDConfig(**values)


def dataset_with_ids(tokenizer, num_examples=NUM_EXAMPLES, ids=None):
    """Causal-LM rows with a string `id` column, the kind of stable id the record stores."""
    dataset = causal_lm_dataset(tokenizer, num_examples, prompt_tokens=2)
    ids = ids if ids is not None else [f"ex-{i:03d}" for i in range(num_examples)]
    return dataset.add_column("id", ids)


def make_trainer(tokenizer, args, dataset=None) -> ZPDTrainer:
    return ZPDTrainer(
        model=tiny_gpt2(len(tokenizer)),
        args=args,
        train_dataset=dataset if dataset is not None else dataset_with_ids(tokenizer),
        data_collator=DataCollatorForSeq2Seq(tokenizer),
    )


@pytest.fixture(scope="module")
def recorded(tokenizer, tmp_path_factory):
    """One real 3-epoch run (ids, replay share, a checkpoint per epoch), shared by the tests that only read it."""
    tmp_path = tmp_path_factory.mktemp("recorded")
    trainer = make_trainer(tokenizer, config(tmp_path, save_strategy="epoch"))
    trainer.train()
    return trainer, tmp_path / "run"


# ---- the record file ----


def test_record_round_trip(recorded):
    trainer, output_dir = recorded
    live = trainer.curriculum
    path = trainer.save_curriculum(str(output_dir / "saved"))
    assert path.endswith(RECORD_NAME) and sorted(os.listdir(output_dir / "saved")) == [RECORD_NAME]
    record = load_curriculum(path)
    # Every epoch's draws, zones, metrics, settings and ids come back exactly.
    assert record.epochs.keys() == live.epochs.keys() == {1, 2, 3}
    assert record.zones.keys() == {2, 3} and record.epochs[1].zone is None
    for epoch, draw in live.epochs.items():
        got = record.epochs[epoch]
        for name in ("counts", "anneal_counts", "in_band", "out_of_reach"):
            np.testing.assert_array_equal(getattr(got, name), getattr(draw, name), err_msg=f"{epoch} {name}")
        assert got.scored_at == draw.scored_at and got.metrics == draw.metrics and got.bands == draw.bands
        if draw.zone is not None:
            np.testing.assert_array_equal(got.zone, draw.zone)
            assert got.zone.dtype == np.int64
    settings = record.settings
    assert settings["dataset_size"] == NUM_EXAMPLES and settings["seed"] == 7
    assert (settings["band_lower"], settings["band_upper"], settings["difficulty_mode"]) == (1.1, 1.3, "composite")
    assert settings["competence_weights"] == [0.4, 0.35, 0.25] and settings["replay_fraction"] == 0.25
    assert settings["composition"] == "zone_and_fill" and settings["zone_repeats"] == 2
    assert record.id_column == "id" and record.example_ids[5] == "ex-005"
    # Every scoring pass is kept, bitwise: the passes after epochs 1 and 2 (none before training: the guard's first
    # baseline is the first epoch's own training passes).
    assert sorted(record.history.tables) == [1, 2]
    for boundary, table in live.history.tables.items():
        loaded = record.history.tables[boundary]
        for column in ("loss", "confidence", "entropy", "num_tokens"):
            np.testing.assert_array_equal(getattr(loaded, column), getattr(table, column))
        assert loaded.vocab_size == table.vocab_size
    # The rows: one per (epoch, example scored for it or drawn in it).
    rows = pq.read_table(path).to_pandas()
    assert len(rows) == 3 * NUM_EXAMPLES
    for epoch in (2, 3):
        epoch_rows = rows[rows.epoch == epoch]
        assert sorted(epoch_rows["index"][epoch_rows.in_zone]) == live.zones[epoch].tolist()
        assert epoch_rows.draws.sum() == NUM_EXAMPLES  # the epoch's N
        metrics = live.epochs[epoch].metrics
        assert epoch_rows.in_band.sum() == metrics["zpd/num_in_band"]
        assert (epoch_rows.in_zone & ~epoch_rows.in_band).sum() == metrics["zpd/num_widened"]
        assert (epoch_rows.draws == 0).sum() == metrics["zpd/num_skipped"]
        assert (epoch_rows.band_lower == metrics["zpd/band_lower"]).all()  # causal LM: one band over the pool
        assert (epoch_rows.ppl == metrics["zpd/ppl"]).all()
        # Difficulty and band on one scale: the in-band rows lie between the edges.
        inside = epoch_rows[epoch_rows.in_band]
        assert (inside.difficulty >= metrics["zpd/band_lower"] * (1 - 1e-12)).all()
        assert (inside.difficulty <= metrics["zpd/band_upper"] * (1 + 1e-12)).all()
    assert rows.example_id.tolist()[:2] == ["ex-000", "ex-001"]
    assert math.exp(rows[rows.epoch == 3].loss.mean()) == pytest.approx(live.epochs[3].metrics["zpd/ppl"])


def test_record_written_at_train_end_and_in_every_checkpoint(recorded):
    trainer, output_dir = recorded
    assert (output_dir / RECORD_NAME).is_file()
    for checkpoint in sorted(output_dir.glob("checkpoint-*")):
        assert (checkpoint / STATE_NAME).is_file() and (checkpoint / RECORD_NAME).is_file()
        assert not [name for name in os.listdir(checkpoint) if name.endswith(".tmp")]
    # The checkpoint after the first epoch already holds the second epoch's draw (planned at that epoch's end).
    first = load_curriculum(str(output_dir / "checkpoint-6"))
    assert sorted(first.epochs) == [1, 2] and sorted(first.history.tables) == [1]
    np.testing.assert_array_equal(first.epochs[2].counts, trainer.curriculum.epochs[2].counts)


def test_resume_keeps_the_scores_of_earlier_epochs(tokenizer, tmp_path, recorded):
    """A resumed run's record still has the passes before the checkpoint, read from the checkpoint's record."""
    full_trainer, output_dir = recorded
    resumed = make_trainer(tokenizer, config(tmp_path, "resumed", save_strategy="epoch"))
    resumed.train(resume_from_checkpoint=str(output_dir / "checkpoint-6"))
    expected, record = full_trainer.curriculum, resumed.curriculum
    assert sorted(record.history.tables) == sorted(expected.history.tables)
    for boundary, table in expected.history.tables.items():
        np.testing.assert_array_equal(record.history.tables[boundary].loss, table.loss)


def synthetic_record(num_examples=6) -> CurriculumRecord:
    table = ScoreTable.empty(num_examples, vocab_size=10)
    table.loss[:] = np.linspace(0.5, 3.0, num_examples)
    table.confidence[:] = 0.5
    table.entropy[:] = 0.5
    table.num_tokens[:] = 4
    settings = dict(dataset_size=num_examples, band_lower=1.1, band_upper=1.3, difficulty_mode="composite",
                    competence_weights=[0.4, 0.35, 0.25], epoch_fraction=1.0, num_samples_per_epoch=num_examples,
                    seed=0)  # fmt: skip
    counts = np.array([0, 1, 2, 1, 2, 0])
    draw = EpochDraw(2, counts, np.zeros(6, dtype=np.int64), zone=np.array([2, 4]), scored_at=1,
                     bands={-1: (2.0, 2.2, 2.6)}, metrics={"zpd/ppl": 3.0})  # fmt: skip
    record = CurriculumRecord(settings, epochs={2: draw})
    record.history.tables[1] = table
    return record


def test_a_damaged_record_is_refused_naming_the_file(tmp_path):
    path = synthetic_record().save(str(tmp_path))
    assert load_curriculum(str(tmp_path)).zones[2].tolist() == [2, 4]
    Path(path).write_bytes(Path(path).read_bytes()[:100])
    with pytest.raises(ValueError, match=f"The curriculum record {re.escape(path)} is unreadable"):
        load_curriculum(path)


def test_a_record_of_an_unknown_format_version_is_refused_naming_the_file(tmp_path):
    table = synthetic_record().to_arrow()
    metadata = json.loads(table.schema.metadata[METADATA_KEY])
    metadata["format_version"] = RECORD_FORMAT_VERSION + 1
    path = str(tmp_path / "future.parquet")
    pq.write_table(table.replace_schema_metadata({METADATA_KEY: json.dumps(metadata).encode()}), path)
    with pytest.raises(ValueError, match=f"{re.escape(path)} has format version {RECORD_FORMAT_VERSION + 1}"):
        load_curriculum(path)
    plain = str(tmp_path / "plain.parquet")
    pq.write_table(pa.table({"x": [1, 2]}), plain)
    with pytest.raises(ValueError, match=f"{re.escape(plain)} is a parquet file but not an hf_zpd curriculum record"):
        load_curriculum(plain)


def test_a_record_written_by_hf_zpd_0_1_is_read_with_its_epochs_renumbered(tmp_path):
    """tests/data/record_format1.parquet was written by hf_zpd 0.1 (main at 82d06c7): zones only, epochs from 0."""
    record = load_curriculum(str(DATA / "record_format1.parquet"))
    zones_then = json.loads((DATA / "zones.json").read_text())  # {epoch counted from 0: zone}
    assert record.format_version == 1
    assert {epoch: zone.tolist() for epoch, zone in record.zones.items()} == {
        int(epoch) + 1: zone for epoch, zone in zones_then.items()
    }
    assert all(record.epochs[e].metrics["zpd/epoch"] == e for e in record.zones)
    assert record.id_column == "id" and record.example_ids[3] == "ex-003"
    assert record.scores_for(2) is not None and np.isfinite(record.scores_for(2).loss).all()
    record.to_pandas()  # the rows render in the current format
    with pytest.raises(ValueError, match="format-1 record .* Replay it with hf_zpd 0.1"):
        record.check_replay(24, lambda column: None, 24, 7, [1, 2, 3])


def test_missing_local_record_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no curriculum record"):
        load_curriculum(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        load_curriculum(str(tmp_path / "nothing" / "here.parquet"))


def test_no_curriculum_before_training(tokenizer, tmp_path):
    with pytest.raises(ValueError, match="no curriculum yet: call train"):
        make_trainer(tokenizer, config(tmp_path)).save_curriculum()


# ---- replay ----


def test_replay_follows_the_record_bitwise(tokenizer, tmp_path, recorded):
    """Same draws, bitwise-identical weights, and no scoring pass."""
    original, output_dir = recorded
    replay = make_trainer(tokenizer, config(tmp_path, "replay", replay_curriculum=str(output_dir)))

    def no_scoring(boundary):
        raise AssertionError("a replay must not run a scoring pass")

    replay._score_pool = no_scoring
    replay.train()
    assert replay.curriculum.epochs.keys() == original.curriculum.epochs.keys()
    for epoch in original.curriculum.epochs:
        np.testing.assert_array_equal(
            replay._zpd_sampler.epoch_indices(epoch), original._zpd_sampler.epoch_indices(epoch)
        )
    assert_bitwise_equal(final_weights(replay.model), final_weights(original.model))
    # The replay's own record is the curriculum it followed, and says so.
    record = load_curriculum(str(tmp_path / "replay"))
    assert record.settings["replayed_from"] == str(output_dir)
    assert record.epoch_metrics == original.curriculum.epoch_metrics


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(num_examples=40), "written for a training set of 48 examples, but train_dataset has 40"),
        (dict(ids=[f"ex-{i:03d}" for i in reversed(range(NUM_EXAMPLES))]), "have other ids than the record's"),
        (dict(drop_ids=True), "by the column 'id', which train_dataset does not have"),
        (dict(seed=8), r"seed 8 \(the record's is 7"),
        (dict(epoch_fraction=0.5), r"an epoch of 24 samples \(the record's epochs have 48"),
        (dict(num_train_epochs=4), r"missing \[4\]"),
    ],
    ids=["size", "ids", "no-id-column", "seed", "fraction", "epochs"],
)
def test_replay_refuses_what_would_draw_differently(tokenizer, tmp_path, recorded, change, message):
    _, output_dir = recorded
    change = dict(change)
    num_examples, ids = change.pop("num_examples", NUM_EXAMPLES), change.pop("ids", None)
    dataset = dataset_with_ids(tokenizer, num_examples, ids)
    if change.pop("drop_ids", False):
        dataset = dataset.remove_columns("id")
    trainer = make_trainer(tokenizer, config(tmp_path, replay_curriculum=str(output_dir), **change), dataset)
    with pytest.raises(ValueError, match=f"Cannot replay {re.escape(str(output_dir / RECORD_NAME))}: .*{message}"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_replay_curriculum_is_validated(tmp_path):
    with pytest.raises(ValueError, match="ZPDConfig.replay_curriculum"):
        config(tmp_path, replay_curriculum="  ")


# ---- the curated dataset ----


def test_curated_dataset_round_trips(recorded, tmp_path):
    trainer, _ = recorded
    curated = trainer.curated_dataset(epoch=2)
    draw = trainer.curriculum.epochs[2]
    drawn = np.flatnonzero(draw.counts)
    assert curated["zpd_example_index"] == drawn.tolist() and set(curated["zpd_epoch"]) == {2}
    assert curated["zpd_draws"] == draw.counts[drawn].tolist()
    assert [i for i, z in zip(drawn, curated["zpd_in_zone"], strict=True) if z] == draw.zone.tolist()
    assert curated["id"] == [f"ex-{i:03d}" for i in drawn]
    table = trainer.curriculum.scores_for(2)
    np.testing.assert_array_equal(curated["zpd_loss"], table.loss[drawn])
    assert curated["input_ids"][0] == trainer.train_dataset[int(drawn[0])]["input_ids"]
    everything = trainer.curated_dataset()
    assert len(everything) == sum(int((d.counts > 0).sum()) for d in trainer.curriculum.epochs.values())

    curated.save_to_disk(str(tmp_path / "disk"))
    assert datasets.load_from_disk(str(tmp_path / "disk")).to_dict() == curated.to_dict()
    curated.to_parquet(str(tmp_path / "curated.parquet"))
    from_parquet = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "curated.parquet"), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert from_parquet.to_dict() == curated.to_dict()
    with pytest.raises(ValueError, match=r"No draws for epoch 7: the record has epochs \[1, 2, 3\]"):
        trainer.curated_dataset(epoch=7)


def test_record_parquet_loads_with_datasets(recorded, tmp_path):
    _, output_dir = recorded
    rows = datasets.load_dataset(
        "parquet", data_files=str(output_dir / RECORD_NAME), split="train", cache_dir=str(tmp_path / "cache")
    )
    assert len(rows) == 3 * NUM_EXAMPLES and {"in_zone", "draws", "out_of_reach"} <= set(rows.column_names)


# ---- cards ----


def test_model_card_gets_a_curriculum_section(recorded):
    trainer, output_dir = recorded
    trainer.create_model_card(license="apache-2.0")
    card = ModelCard.load(str(output_dir / "README.md"))
    assert {"hf_zpd", "curriculum"} <= set(card.data.tags)
    assert card.text.count("## ZPD curriculum") == 1
    trainer.create_model_card()  # rendering twice does not repeat the section
    assert ModelCard.load(str(output_dir / "README.md")).text.count("## ZPD curriculum") == 1


@pytest.mark.parametrize("homepage", [None, "https://example.org/hf_zpd"])
def test_cards_link_the_project_only_where_its_metadata_names_a_home_page(recorded, monkeypatch, homepage):
    """The link comes from the installed package's metadata; without one, the cards name hf_zpd with no link (a
    dead link in every pushed card is worse than none)."""
    trainer, output_dir = recorded
    monkeypatch.setattr("hf_zpd.cards.package_homepage", lambda: homepage)
    dataset_text = str(dataset_card(trainer.curriculum, "someone/run-curriculum"))
    trainer.create_model_card()
    model_text = ModelCard.load(str(output_dir / "README.md")).text
    for text in (dataset_text, model_text):
        assert "github.com/hf-zpd" not in text
        if homepage is None:
            assert "hf_zpd](" not in text and "with hf_zpd " in text
        else:
            assert f"[hf_zpd]({homepage})" in text


def test_package_homepage_reads_the_project_urls(monkeypatch):
    from hf_zpd import _io

    class Metadata:
        def __init__(self, urls):
            self.urls = urls

        def get_all(self, key):
            return self.urls if key == "Project-URL" else None

    monkeypatch.setattr(
        "importlib.metadata.metadata", lambda name: Metadata(["Issues, https://x/i", "Homepage, https://x"])
    )
    assert _io.package_homepage() == "https://x"
    monkeypatch.setattr("importlib.metadata.metadata", lambda name: Metadata(["Issues, https://x/issues"]))
    assert _io.package_homepage() is None  # not a label that names the project's home
    monkeypatch.setattr("importlib.metadata.metadata", lambda name: Metadata(["Source Code, https://x/src"]))
    assert _io.package_homepage() == "https://x/src"
    monkeypatch.setattr("importlib.metadata.metadata", lambda name: Metadata(["Repository, https://x/repo"]))
    assert _io.package_homepage() == "https://x/repo"
    monkeypatch.setattr("importlib.metadata.metadata", lambda name: Metadata([]))
    assert _io.package_homepage() is None


def test_dataset_card_documents_columns_settings_and_epochs(recorded):
    trainer, _ = recorded
    card = dataset_card(trainer.curriculum, "someone/run-curriculum", license="mit")
    assert card.data.license == "mit" and {"hf_zpd", "curriculum"} <= set(card.data.tags)
    text = str(card)
    for column in ("`in_zone`", "`draws`", "`out_of_reach`", "`difficulty`", "`example_id`", "`running_ppl`"):
        assert column in text
    assert (
        'load_dataset("someone/run-curriculum"' in text and "| band (relative to the level D) | [1.1, 1.3] |" in text
    )
    ppl = trainer.curriculum.epochs[3].metrics["zpd/ppl"]
    # The last epoch ends with the annealing draws (anneal_fraction's default).
    assert re.search(rf"\| 3 \| zone \+ fill \+ replay \+ anneal \| {ppl:.4g} \|", text)
    assert "| 1 | whole set (uniform) |" in text


# ---- the Hub, over real HTTP ----


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def hub_server():
    server = HubServer()
    yield server.endpoint
    server.stop()


def point_clients_at(endpoint: str, monkeypatch, tmp_path) -> None:
    """Switch huggingface_hub and datasets to `endpoint` after import, with a fresh cache and no stored token."""
    constants = huggingface_hub.constants
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", endpoint + "/{repo_id}/resolve/{revision}/{filename}"
    )
    monkeypatch.setattr(datasets.config, "HF_ENDPOINT", endpoint)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)  # the test server speaks LFS, not Xet
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    # conftest turns offline mode on for the rest of the suite.
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    monkeypatch.setenv("HF_TOKEN", "test-token")


@pytest.fixture
def hub(hub_server, monkeypatch, tmp_path) -> str:
    point_clients_at(hub_server, monkeypatch, tmp_path)
    return hub_server


def test_hub_round_trip(recorded, hub, tmp_path):
    trainer, output_dir = recorded
    commit = trainer.push_curriculum_to_hub("tester/zpd-run-curriculum", license="mit")
    assert commit.repo_url.repo_id == "tester/zpd-run-curriculum"
    rows = datasets.load_dataset("tester/zpd-run-curriculum", split="train", cache_dir=str(tmp_path / "datasets"))
    expected = pq.read_table(output_dir / RECORD_NAME).to_pandas()
    assert len(rows) == len(expected) == 3 * NUM_EXAMPLES
    assert rows["index"] == expected["index"].tolist() and rows["draws"] == expected.draws.tolist()
    record = load_curriculum("tester/zpd-run-curriculum")
    for epoch, draw in trainer.curriculum.epochs.items():
        np.testing.assert_array_equal(record.epochs[epoch].counts, draw.counts)
    card = DatasetCard.load("tester/zpd-run-curriculum", repo_type="dataset")
    assert card.data.license == "mit" and {"hf_zpd", "curriculum"} <= set(card.data.tags)
    assert "## Per epoch" in card.text and 'hf_zpd.load_curriculum("tester/zpd-run-curriculum")' in card.text


def test_a_loaded_record_pushes_again(recorded, hub):
    _, output_dir = recorded
    record = load_curriculum(str(output_dir))
    commit = push_curriculum(record, "tester/pushed-again", local_path=str(output_dir / RECORD_NAME))
    assert load_curriculum(commit.repo_url.repo_id).epochs.keys() == record.epochs.keys()


def test_replay_from_a_hub_repo(tokenizer, recorded, hub, tmp_path):
    trainer, _ = recorded
    trainer.push_curriculum_to_hub("tester/replay-source")
    replay = make_trainer(tokenizer, config(tmp_path, replay_curriculum="tester/replay-source", num_train_epochs=2))
    replay.train()
    np.testing.assert_array_equal(replay.curriculum.epochs[2].counts, trainer.curriculum.epochs[2].counts)


def test_push_to_hub_pushes_the_curriculum_beside_the_model(tokenizer, hub, tmp_path):
    trainer = make_trainer(
        tokenizer, config(tmp_path, "pushed", num_train_epochs=2, push_to_hub=True, hub_model_id="tester/tiny-zpd")
    )
    trainer.train()
    trainer.push_to_hub(license="apache-2.0")
    assert trainer.default_curriculum_repo_id() == "tester/tiny-zpd-curriculum"
    record = load_curriculum("tester/tiny-zpd-curriculum")
    np.testing.assert_array_equal(record.epochs[2].counts, trainer.curriculum.epochs[2].counts)
    model_card = ModelCard.load("tester/tiny-zpd")
    assert "## ZPD curriculum" in model_card.text and "tester/tiny-zpd-curriculum" in model_card.data.datasets
    assert {"hf_zpd", "curriculum"} <= set(model_card.data.tags)
    files = huggingface_hub.HfApi().list_repo_files("tester/tiny-zpd")
    assert RECORD_NAME in files and "model.safetensors" in files


def test_push_without_a_token_fails_clearly_and_keeps_the_local_copy(recorded, hub, monkeypatch):
    trainer, output_dir = recorded
    monkeypatch.delenv("HF_TOKEN")
    (output_dir / RECORD_NAME).unlink()
    with pytest.raises(PermissionError, match=r"refused the write \(401\).*saved locally at .*" + RECORD_NAME):
        trainer.push_curriculum_to_hub("tester/no-token-curriculum")
    assert load_curriculum(str(output_dir)).epochs.keys() == {1, 2, 3}


def test_push_to_an_unreachable_hub_fails_clearly_and_keeps_the_local_copy(recorded, monkeypatch, tmp_path):
    trainer, output_dir = recorded
    point_clients_at(f"http://127.0.0.1:{free_port()}", monkeypatch, tmp_path)  # nothing listens there
    (output_dir / RECORD_NAME).unlink()
    with pytest.raises(ConnectionError, match=r"Could not push the curriculum .* at http://127\.0\.0\.1:\d+ .*"):
        trainer.push_curriculum_to_hub("tester/unreachable-curriculum")
    assert load_curriculum(str(output_dir)).epochs.keys() == {1, 2, 3}


def test_loading_from_an_unreachable_hub_fails_clearly(monkeypatch, tmp_path):
    # Offline mode fails the same path as an unreachable endpoint (huggingface_hub retries the latter for ~23 s
    # before it gives up, with the same message from hf_zpd).
    point_clients_at(f"http://127.0.0.1:{free_port()}", monkeypatch, tmp_path)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConnectionError, match="Could not download the curriculum 'tester/some-curriculum'.*offline"):
        load_curriculum("tester/some-curriculum")


def test_loading_a_repo_without_a_record_is_a_clear_error(hub):
    with pytest.raises(FileNotFoundError, match="has no zpd_curriculum.parquet"):
        load_curriculum("tester/does-not-exist")


def test_the_package_exports_resolve_to_their_modules():
    """Every public name resolves lazily to the object of the module the export table names, and `dir` lists it."""
    import importlib

    for name, module in hf_zpd._EXPORTS.items():
        assert getattr(hf_zpd, name) is getattr(importlib.import_module(f"hf_zpd.{module}"), name), name
    assert set(hf_zpd.__all__) == set(hf_zpd._EXPORTS) <= set(dir(hf_zpd))
    with pytest.raises(AttributeError, match="no attribute 'NotAThing'"):
        hf_zpd.NotAThing  # noqa: B018


# ---- a classifier's record: the training passes, the label audit and the data map ----


@pytest.fixture(scope="module")
def classified(tokenizer, tmp_path_factory):
    """A 3-epoch classifier run whose labels are a third wrong, with ids."""
    from builders import classification_dataset, tiny_bert_classifier
    from transformers import DataCollatorWithPadding

    tmp_path = tmp_path_factory.mktemp("classified")
    dataset = classification_dataset(tokenizer, NUM_EXAMPLES)
    labels = np.array(dataset["label"])
    labels[::3] = (labels[::3] + 1) % 3
    dataset = dataset.remove_columns("label").add_column("label", labels.tolist())
    dataset = dataset.add_column("id", [f"ex-{i:03d}" for i in range(NUM_EXAMPLES)])
    trainer = ZPDTrainer(model=tiny_bert_classifier(len(tokenizer)), args=config(tmp_path, replay_fraction=0.0),
                         train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer))  # fmt: skip
    trainer.train()
    return trainer, tmp_path / "run"


def test_the_training_passes_round_trip_through_the_record_file(classified):
    trainer, output_dir = classified
    live = trainer.curriculum
    record = load_curriculum(str(output_dir))
    assert sorted(record.training_passes) == sorted(live.training_passes) == [1, 2, 3]
    for epoch, (table, steps) in live.training_passes.items():
        got, got_steps = record.training_passes[epoch]
        drawn = ~np.isnan(steps)
        assert drawn.sum() == (live.epochs[epoch].counts > 0).sum(), "every drawn example has its training pass"
        np.testing.assert_array_equal(got_steps, steps)
        for name in ("loss", "confidence", "entropy", "num_tokens"):
            np.testing.assert_array_equal(getattr(got, name)[drawn], getattr(table, name)[drawn], err_msg=name)
        np.testing.assert_array_equal(got.probabilities[drawn], table.probabilities[drawn])
        np.testing.assert_allclose(table.probabilities[drawn].sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(record.labels, live.labels)
    rows = record.to_pandas()
    assert rows["label"].notna().all(), "a classifier's rows carry the label in every epoch"


def test_the_dataset_card_shows_the_label_audit_and_links_the_data_map(classified):
    from hf_zpd import likely_label_errors

    trainer, _ = classified
    text = str(dataset_card(trainer.curriculum, "someone/classified-curriculum"))
    listed = likely_label_errors(trainer.curriculum, listed_only=True)
    assert f"**{len(listed)}** of the {NUM_EXAMPLES}" in text and "## Label audit" in text
    first = listed.iloc[0]
    assert f"| 1 | {first['index']} | {first['example_id']} | {first['label']} | {first['predicted']} |" in text
    assert "![Data map" in text and "(data_map.png)" in text
    assert "`train_probabilities`" in text


def test_a_pushed_classifier_curriculum_carries_its_data_map(classified, hub):
    trainer, _ = classified
    trainer.push_curriculum_to_hub("tester/classified-curriculum")
    files = huggingface_hub.HfApi().list_repo_files("tester/classified-curriculum", repo_type="dataset")
    assert {"README.md", RECORD_NAME, "data_map.png"} <= set(files)
    record = load_curriculum("tester/classified-curriculum")
    assert sorted(record.training_passes) == [1, 2, 3]


def test_a_language_models_card_has_no_audit(recorded):
    trainer, _ = recorded
    text = str(dataset_card(trainer.curriculum, "someone/run-curriculum"))
    assert "## Label audit" not in text and "## Data map" in text, "an LM's map has confidence, no correctness"
