"""The per-epoch table shared by the CLI summary, the report and the cards, on hand-written logs."""

from hf_zpd.epoch_table import (
    MISSING,
    drawn_from,
    epoch_rows,
    evaluation_after_epochs,
    render_epoch_table,
)


def test_each_epoch_takes_the_evaluation_nearest_its_end():
    history = [
        {"eval_loss": 3.0, "epoch": 0.5, "step": 3},
        {"eval_loss": 2.0, "epoch": 1.0, "step": 6},
        {"eval_loss": 1.8, "epoch": 1.3, "step": 8},
        {"eval_loss": 1.5, "epoch": 1.7, "step": 10},
        # A second eval dataset logs its own entry at the same step: merged into one evaluation.
        {"eval_other_loss": 9.0, "epoch": 1.7, "step": 10},
        {"loss": 1.0, "epoch": 1.8, "step": 11},
    ]
    after = evaluation_after_epochs(history)
    assert sorted(after) == [1, 2]
    assert after[1]["eval_loss"] == 2.0  # 0.5 and 1.3 round to the end of epoch 1 too, but 1.0 is nearest
    assert after[2] == {"eval_loss": 1.5, "eval_other_loss": 9.0, "epoch": 1.7, "step": 10}
    rows = epoch_rows(history)
    assert [row.epoch for row in rows] == [1, 2]
    table = render_epoch_table(history)
    assert "| 2 | whole set (uniform) | 1.5 (at epoch 1.70) | 9 (at epoch 1.70) |" in table


def test_what_an_epoch_drew_from_in_words():
    assert drawn_from({}) == "whole set (uniform)"
    assert drawn_from({"zpd/uniform": 1.0, "zpd/epoch": 1}) == "whole set (uniform)"
    assert drawn_from({"zpd/zone_draws": 48, "zpd/fill_draws": 0}) == "zone"
    assert drawn_from({"zpd/zone_draws": 20, "zpd/fill_draws": 28}) == "zone + fill"
    assert drawn_from({"zpd/zone_draws": 20, "zpd/fill_draws": 20, "zpd/replay_draws": 8}) == "zone + fill + replay"
    assert drawn_from({"zpd/zone_draws": 20, "zpd/fill_draws": 28, "zpd/rescored": 0}) == "zone + fill (latest scores)"
    assert drawn_from({"zpd/zone_draws": 20, "zpd/fill_draws": 20, "zpd/anneal_draws": 8}) == "zone + fill + anneal"


def test_text_and_markdown_show_the_same_cells():
    history = [
        {"zpd/epoch": 1, "zpd/uniform": 1.0, "zpd/num_skipped": 0, "epoch": 0, "step": 0},
        {"eval_accuracy": 0.5, "eval_loss": 1.0, "epoch": 1.0, "step": 4},
        {"zpd/epoch": 2, "zpd/ppl": 2.5, "zpd/level": 2.4, "zpd/band_lower": 2.64, "zpd/band_upper": 3.12,
         "zpd/zone_fraction": 0.25, "zpd/num_selected": 10, "zpd/num_widened": 0, "zpd/zone_draws": 20,
         "zpd/fill_draws": 12, "zpd/num_skipped": 8, "zpd/num_out_of_reach": 3, "epoch": 1.0, "step": 4},
        {"eval_accuracy": 0.625, "eval_loss": 0.9, "epoch": 2.0, "step": 8},
    ]  # fmt: skip
    markdown = render_epoch_table(history)
    text = render_epoch_table(history, style="text")
    lines = markdown.splitlines()
    assert lines[0].startswith("| epoch | drawn from | pool PPL | level D | band | in band |")
    assert lines[0].endswith("| loss | accuracy |")
    assert (
        lines[3] == "| 2 | zone + fill | 2.5 | 2.4 | [2.64, 3.12] | 25.0% | 10 | 0 | 20 | 12 | 8 | 3 | 0.9 | 0.625 |"
    )
    assert lines[2].split(" | ")[2] == MISSING  # the uniform epoch has no pool PPL
    text_lines = text.splitlines()
    assert text_lines[0].split()[:3] == ["epoch", "drawn", "from"]
    assert text_lines[3].split() == ["2", "zone", "+", "fill", "2.5", "2.4", "[2.64,", "3.12]", "25.0%", "10", "0",
                                     "20", "12", "8", "3", "0.9", "0.625"]  # fmt: skip
