"""The one results table (src/results.py): aggregation of hand-written results dicts, and the cells every
table prints (the run's, the benchmark's, the report's, W&B's)."""
import pytest

from src import results
from src.results import Column, ResultsError, aggregate, format_text, table
from tests.test_report import fake_run, recover_run


def seeds(**per_selector):
    """Two runs (rng 0, 1) with the given accuracy pair per selector; θf 0.95, θ0 0.25 in both."""
    return [fake_run(rng=s, accs={name: accs[s] for name, accs in per_selector.items()}) for s in (0, 1)]


def test_rows_average_over_seeds_with_gap_closed_from_the_means():
    rows = aggregate(seeds(select=(0.90, 0.92), random=(0.80, 0.80), expert=(0.93, 0.95)))
    sel, rand, expert = rows
    assert (sel["n"], sel["rngs"]) == (2, [0, 1]) and sel["accuracy_mean"] == pytest.approx(0.91)
    assert sel["thetaf_accuracy"] == 0.95 and sel["thetaf_accuracy_std"] == 0.0
    assert sel["gap_closed"] == pytest.approx((0.91 - 0.80) / (0.95 - 0.80)) and rand["gap_closed"] == 0.0
    assert expert["gap_closed"] == pytest.approx((0.94 - 0.80) / 0.15)
    assert sel["composition"] == {"noun.animal": 0.5, "noun.plant": 0.5}


def test_no_random_or_no_reference_leaves_gap_closed_empty():
    rows = aggregate(seeds(select=(0.9, 0.9)))
    assert rows[0]["gap_closed"] is None
    columns, _ = table(rows)
    assert "gap closed" not in columns


def test_table_cells_labels_and_reference_rows():
    rows = aggregate(seeds(select=(0.90, 0.92), random=(0.80, 0.80), expert=(0.93, 0.95)))
    columns, cells = table(rows)
    assert columns == ["selector", "n", "accuracy", "OT distance", "gap closed", "composition of picks"]
    by_name = {c[0]: dict(zip(columns, c)) for c in cells}
    assert list(by_name) == ["select", "random", "expert (k true rows)", "θf (the finetuned model)",
                             "θ0 (the base model)"]
    assert by_name["select"]["accuracy"] == "0.9100 ± 0.0141" and by_name["select"]["gap closed"] == "0.73"
    assert by_name["select"]["composition of picks"] == "animal:0.50 plant:0.50"
    assert by_name["θf (the finetuned model)"]["accuracy"] == "0.9500 ± 0.0000"
    assert by_name["θ0 (the base model)"]["OT distance"] == ""
    text = format_text(rows)
    assert text.splitlines()[0].split()[:3] == ["selector", "n", "accuracy"]
    assert "gap closed = (selector − random) / (θf − random)" in text


def test_one_run_shows_no_std_and_no_n():
    columns, cells = table(aggregate([fake_run()]))
    assert "n" not in columns and cells[0][columns.index("accuracy")] == "0.9000"


def test_reference_rows_follow_each_group_of_keys():
    runs = [fake_run(d=d, rng=s) for d in (256, 1024) for s in (0, 1)]
    columns, cells = table(aggregate(runs), keys=["d", "P"])
    assert columns[:4] == ["selector", "d", "P", "n"]
    assert [(c[0], c[1]) for c in cells] == [("select", "256"), ("random", "256"), ("θf (the finetuned model)", "256"),
                                             ("θ0 (the base model)", "256"), ("select", "1024"), ("random", "1024"),
                                             ("θf (the finetuned model)", "1024"), ("θ0 (the base model)", "1024")]


def test_optional_numeric_columns_appear_when_the_rows_carry_them(monkeypatch):
    runs = seeds(select=(0.9, 0.9), random=(0.8, 0.8))
    assert "of them trained" not in table(aggregate(runs))[0]
    for res, share in zip(runs, (0.5, 0.3)):
        res["results"][0]["leaked_share"] = share
        res["results"][1]["leaked_share"] = None  # no leaked rows in the seed corpus: not a number
        res["results"][0]["precision_at_k"] = share / 2
    columns, cells = table(aggregate(runs))
    col = columns.index("of them trained")
    assert cells[0][col] == "0.400 ± 0.141" and cells[1][col] == ""
    assert "precision@k" not in columns
    # A new per-selector number is one entry in COLUMNS.
    monkeypatch.setattr(results, "COLUMNS", (*results.COLUMNS, Column("precision_at_k", "precision@k", ".3f")))
    columns, cells = table(aggregate(runs))
    assert cells[0][columns.index("precision@k")] == "0.200 ± 0.071"


def test_composition_falls_back_to_groups_largest_first():
    res = fake_run()
    for r in res["results"]:
        r.update(class_balance={}, groups={"noun.act": 0.2, "noun.food": 0.7, "verb.motion": 0.1})
    rows = aggregate([res])
    assert list(rows[0]["composition"]) == ["noun.food", "noun.act", "verb.motion"]
    columns, cells = table(rows)
    assert cells[0][columns.index("composition of picks")] == "food:0.70 act:0.20 motion:0.10"


def test_recover_rows_have_the_objective_and_no_metric():
    rows = aggregate([recover_run(0, {"select": 0.5, "random": None}), recover_run(1, {"select": 0.7, "random": None})])
    columns, cells = table(rows)
    assert columns == ["selector", "n", "objective after the last pick"]
    assert cells == [["select", "2", "0.6000 ± 0.1414"], ["random", "2", ""]]
    assert rows[0]["info"] == {"device": "cpu"}  # the selection paths differ between the runs: not kept


def test_values_mode_keeps_numbers_for_a_table_that_sorts():
    columns, cells = table(aggregate([fake_run()]), values=True, details=True)
    assert cells[0][columns.index("accuracy")] == 0.9 and cells[0][columns.index("gap closed")] == pytest.approx(
        (0.9 - 0.8) / (0.95 - 0.8))
    assert cells[-1][:2] == ["θ0 (the base model)", 0.25] and cells[-1][columns.index("k")] is None


def test_runs_with_different_metrics_do_not_share_a_table():
    sft = fake_run()
    sft["metric"] = "perplexity"
    with pytest.raises(ResultsError, match=r"different metrics \(accuracy, perplexity\)"):
        aggregate([fake_run(), sft])
