"""Sweep reports (src/report.py) and run tracking (src/tracking.py).

Unit tests aggregate hand-written results dicts (no models); one slow test runs a real tiny multirun
through the entry point with W&B offline, then the report on it.
"""
import json
import os
import statistics
import subprocess
import sys

import pytest

from src import report
from src.tracking import scalar_metrics, table_rows
from tests.conftest import ROOT, TINY

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_run(d=1024, P=3, rng=0, accs=None, ots=None, **config):
    """A results.json dict as src.pipeline.run writes it (only the fields the report reads)."""
    accs = accs or {"select": 0.9, "random": 0.8}
    ots = ots or {s: 1.0 + i / 10 for i, s in enumerate(accs)}
    cfg = {"d": d, "P": P, "k": 10, "rng": rng, "cache_dir": "/c", "baselines": ["random"],
           "model": {"max_length": 32}, "finetune": {"max_length": 32, "epochs": 1},
           "seed": {"include": {"pos": ["n", "v", "a"]}, "max_examples": 100}}
    for key, v in config.items():  # e.g. seed__include={"pos": ["n"]}
        *path, last = key.split("__")
        node = cfg
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return {"config": cfg, "task": "classification", "metric": "accuracy",
            "reference": {"theta0_accuracy": 0.25, "thetaf_accuracy": 0.95},
            "timings": {"data": 1.0, "select/retrain": 2.0},
            "results": [{"selector": s, "k": 10, "d": d, "P": P, "rng": rng, "accuracy": a, "ot_distance": ots[s],
                         "class_balance": {"noun.animal": 0.5, "noun.plant": 0.5}} for s, a in accs.items()]}


def write_sweep(root, runs):
    for i, res in enumerate(runs):
        (root / str(i)).mkdir(parents=True)
        (root / str(i) / "results.json").write_text(json.dumps(res))
    return root


def test_aggregate_means_stds_over_seeds_grouped_by_selector_d_P():
    runs = [fake_run(d=d, rng=s, accs={"select": a, "random": a - 0.1})
            for d, accs_by_seed in [(256, [0.70, 0.80, 0.90]), (1024, [0.85, 0.95, 0.90])]
            for s, a in enumerate(accs_by_seed)]
    rows = report.aggregate(runs)
    assert [(r["selector"], r["d"], r["P"]) for r in rows] == [
        ("select", 256, 3), ("random", 256, 3), ("select", 1024, 3), ("random", 1024, 3)]
    sel256 = rows[0]
    assert sel256["n"] == 3 and sel256["rngs"] == [0, 1, 2]
    assert sel256["accuracy_mean"] == pytest.approx(0.8)
    assert sel256["accuracy_std"] == pytest.approx(statistics.stdev([0.7, 0.8, 0.9]))  # sample std
    assert rows[1]["accuracy_mean"] == pytest.approx(0.7)
    assert rows[2]["accuracy_mean"] == pytest.approx(0.9) and rows[2]["accuracy_std"] == pytest.approx(0.05)
    assert sel256["ot_distance_mean"] == pytest.approx(1.0) and sel256["ot_distance_std"] == pytest.approx(0.0)
    assert sel256["thetaf_accuracy"] == pytest.approx(0.95)


def test_single_run_has_zero_std_and_P_groups_separately():
    rows = report.aggregate([fake_run(P=1, accs={"select": 0.6}), fake_run(P=5, accs={"select": 0.7})])
    assert [(r["P"], r["n"], r["accuracy_mean"], r["accuracy_std"]) for r in rows] == [(1, 1, 0.6, 0.0),
                                                                                      (5, 1, 0.7, 0.0)]


def test_other_swept_keys_split_groups_but_derived_and_seed_keys_do_not():
    runs = [fake_run(rng=s, seed__include={"pos": pos}, accs={"select": 0.5 + s / 10})
            for pos in (["n"], ["v", "a"]) for s in (0, 1)]
    assert report.varying_keys(runs) == ["seed.include.pos"]
    rows = report.aggregate(runs)
    assert [(r["seed.include.pos"], r["n"]) for r in rows] == [("[n]", 2), ("[v,a]", 2)]
    assert rows[0]["accuracy_mean"] == pytest.approx(0.55)
    # Two keys that always change together (one derived from the other) give one column, not two;
    # a key that changes only with rng (a derived seed) is averaged over like rng.
    runs = [fake_run(d=d, rng=s, model__max_length=m, finetune__max_length=m, projector__seed=s)
            for d, m in ((8, 16), (8, 32)) for s in (0, 1)]
    assert report.varying_keys(runs) == ["finetune.max_length"]


def test_flatten_makes_hashable_values():
    assert report.flatten({"a": {"b": [1, 2], "c": {}}, "d": None}) == {"a.b": "[1,2]", "a.c": "{}", "d": None}


def test_build_report_writes_table_plots_and_self_contained_html(tmp_path):
    root = write_sweep(tmp_path / "sweep", [fake_run(d=d, rng=s) for d in (256, 1024) for s in (0, 1)])
    assert report.main([str(root)]) == 0
    out = root / "report"
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert len(rows) == 4 and {r["n"] for r in rows} == {2}
    assert (out / "report.csv").read_text().splitlines()[0].startswith("selector,d,P,n,rngs,metric,accuracy_mean")
    for name in ("accuracy_vs_d", "accuracy", "ot_distance"):
        assert (out / f"{name}.png").read_bytes()[:8] == PNG_MAGIC
    assert not (out / "accuracy_vs_P.png").exists()  # one value of P
    page = (out / "report.html").read_text()
    assert "accuracy vs P skipped" in page and page.count("data:image/png;base64,") == 3
    assert '<table id="results">' in page and "src=\"http" not in page and "<link" not in page


def sft_run(d, rng, ppl):
    res = fake_run(d=d, rng=rng, accs={"select": 0.0, "random": 0.0})
    res.update(task="sft", metric="perplexity", reference={"theta0_perplexity": 90.0, "thetaf_perplexity": 30.0})
    for r, p in zip(res["results"], ppl):
        del r["accuracy"]
        r.update(perplexity=p, class_balance={}, groups={"noun.act": 1.0})
    return res


def test_report_uses_the_tasks_metric(tmp_path, capsys):
    root = write_sweep(tmp_path / "sft", [sft_run(d, s, (40.0 + s, 60.0)) for d in (64, 128) for s in (0, 1)])
    assert report.main([str(root)]) == 0
    rows = json.loads((root / "report" / "report.json").read_text())["rows"]
    assert rows[0]["metric"] == "perplexity" and rows[0]["perplexity_mean"] == pytest.approx(40.5)
    assert rows[0]["thetaf_perplexity"] == 30.0 and "accuracy_mean" not in rows[0]
    assert {p.name for p in (root / "report").glob("*.png")} == {"perplexity_vs_d.png", "perplexity.png",
                                                                 "ot_distance.png"}
    out = capsys.readouterr().out.splitlines()
    header = next(line for line in out if line.startswith("selector"))
    assert header.split()[:5] == ["selector", "d", "P", "n", "perplexity"]
    thetaf = [line for line in out if line.startswith("θf (the finetuned model)")]  # a reference row per d
    assert len(thetaf) == 2 and all("30.0000" in line for line in thetaf)
    m = scalar_metrics(sft_run(64, 0, (40.0, 60.0)))
    assert m["select/perplexity"] == 40.0 and m["reference/thetaf_perplexity"] == 30.0
    assert "select/accuracy" not in m
    write_sweep(tmp_path / "mixed", [fake_run(), sft_run(64, 0, (40.0, 60.0))])
    assert report.main([str(tmp_path / "mixed")]) == 2
    assert "different metrics (accuracy, perplexity)" in capsys.readouterr().err


def recover_run(rng, objectives, d=64):
    """A recover run's results.json without true data (mode=recover): no metric, no reference, an objective per row."""
    return {"config": {"d": d, "P": 1, "k": 8, "rng": rng, "mode": "recover"}, "mode": "recover", "task": "sft",
            "n_seed": 60, "scores": f"/runs/{rng}/scores.parquet", "timings": {"select/select": 1.0},
            "results": [{"selector": s, "k": 8, "d": d, "P": 1, "rng": rng, "objective": o, "device": "cpu",
                         "selection": f"/runs/{rng}/selections/{s}/selection.parquet"} for s, o in objectives.items()]}


def test_report_aggregates_recover_runs_by_selector(tmp_path, capsys):
    runs = [recover_run(0, {"select": 0.50, "topk": 0.30, "random": None}),
            recover_run(1, {"select": 0.70, "topk": 0.40, "random": None})]
    rows = report.aggregate(runs)
    assert [(r["selector"], r["n"], r["metric"]) for r in rows] == [("select", 2, None), ("topk", 2, None),
                                                                    ("random", 2, None)]
    assert rows[0]["objective_mean"] == pytest.approx(0.6) and rows[0]["objective_std"] == pytest.approx(
        statistics.stdev([0.5, 0.7]))
    assert "objective_mean" not in rows[2]  # random has no objective: an empty cell, not a zero
    assert not any(k.startswith(("ot_distance", "accuracy", "theta")) for r in rows for k in r)

    root = write_sweep(tmp_path / "recover", runs)
    assert report.main([str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    header = next(line for line in out if line.startswith("selector"))
    assert "objective after the last pick" in header and "OT distance" not in header and "accuracy" not in header
    assert any(line.startswith("select ") and "0.6000 ± 0.1414" in line for line in out)
    assert not any(line.startswith("θf") for line in out)  # nothing to compare against
    written = root / "report"
    assert {p.name for p in written.glob("*.png")} == {"objective.png"}  # one d, one P: no line plots
    page = (written / "report.html").read_text()
    assert "<td>0.6000 ± 0.1414</td>" in page and "objective vs d skipped" in page
    assert (written / "report.csv").read_text().splitlines()[0].startswith("selector,d,P,n,rngs,metric,k_mean")
    # A recover run and an experiment do not share a table.
    write_sweep(tmp_path / "mixed", [fake_run(), recover_run(0, {"select": 0.5})])
    assert report.main([str(tmp_path / "mixed")]) == 2
    assert "accuracy, none (recover without true data)" in capsys.readouterr().err


def test_cli_errors_and_newest_sweep(tmp_path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: no results.json files under {tmp_path / 'empty'}"]
    monkeypatch.chdir(tmp_path)
    assert report.main([]) == 2 and "none found in outputs/multiruns" in capsys.readouterr().err
    base = tmp_path / "outputs" / "multiruns"
    old = write_sweep(base / "old", [fake_run()])
    new = write_sweep(base / "new", [fake_run(d=512)])
    os.utime(old, (1, 1))
    assert report.main([]) == 0
    assert (new / "report" / "report.html").exists() and not (old / "report").exists()
    assert "512" in capsys.readouterr().out


def test_tracking_flattens_metrics_and_table():
    res = fake_run()
    m = scalar_metrics(res)
    assert m["select/accuracy"] == 0.9 and m["random/ot_distance"] == pytest.approx(1.1)
    assert m["timings/select/retrain"] == 2.0 and m["reference/thetaf_accuracy"] == 0.95
    res["results"][1]["objective_last"] = 0.5  # selector-specific info: a column, empty for the others
    cols, data = table_rows(res)
    # The printed table's columns first (numbers as numbers), then every other field of the rows.
    assert cols[:3] == ["selector", "accuracy", "OT distance"] and "k" in cols and "balance/noun.animal" in cols
    assert [row[0] for row in data] == ["select", "random", "θf (the finetuned model)", "θ0 (the base model)"]
    assert data[0][cols.index("accuracy")] == 0.9 and data[0][cols.index("k")] == 10
    assert data[2][cols.index("accuracy")] == 0.95 and data[0][cols.index("balance/noun.animal")] == 0.5
    assert [row[cols.index("objective_last")] for row in data] == [None, 0.5, None, None]


# ------------------------------------------------------------------------------------ end to end
def wandb_records(path):
    """Records of an offline W&B run file (``run-<id>.wandb``), as ``wandb_internal_pb2.Record`` messages.

    Parsed by hand because W&B has no public reader for it (the Python datastore that read it moved into
    the Go ``wandb-core`` binary), and offline the run's group and logged artifacts are written nowhere
    else: ``files/`` holds only the media, e.g. the results table's JSON. The file is a LevelDB-style log:
    a 7-byte header (":W&B", magic, version), then 32 KiB blocks of chunks, each framed by
    CRC32 (4 bytes), length (2) and type (1: full record, 2/3/4: first/middle/last fragment).
    """
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, pos, buf = path.read_bytes(), 7, b""
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:  # too little left in a block for a chunk header: padding
            pos += 32768 - pos % 32768
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos:pos + 7])
        buf = (buf if kind in (3, 4) else b"") + data[pos + 7:pos + 7 + n]
        pos += 7 + n
        if kind in (1, 4):
            r = pb.Record()
            r.ParseFromString(buf)
            yield r


@pytest.mark.slow
def test_tiny_multirun_then_report(tmp_path):
    # Two jobs, the fewest that group: the same config over two seeds (rng), averaged into one row per selector.
    sweep = tmp_path / "w2d-sweep"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "W2D_CACHE_DIR": str(tmp_path / "cache"),
           "WANDB_DATA_DIR": str(tmp_path / "wandb-data"), "WANDB_CACHE_DIR": str(tmp_path / "wandb-cache")}
    p = subprocess.run([sys.executable, "-m", "src.main", "-m", *TINY, "P=1", "logger=wandb", "rng=0,1",
                        "selector=select", "baselines=[random]", f"hydra.sweep.dir={sweep}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    jobs = {f.parent: json.loads(f.read_text()) for f in sorted(sweep.glob("*/results.json"))}
    runs = list(jobs.values())
    assert sorted(res["config"]["rng"] for res in runs) == [0, 1]

    q = subprocess.run([sys.executable, "-m", "src.report", str(sweep)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=300)
    assert q.returncode == 0, q.stderr[-3000:]
    out = sweep / "report"
    rows = json.loads((out / "report.json").read_text())["rows"]
    assert [(r["selector"], r["d"], r["n"], r["rngs"]) for r in rows] == [("select", 16, 2, [0, 1]),
                                                                          ("random", 16, 2, [0, 1])]
    for row in rows:
        accs = [r["accuracy"] for res in runs for r in res["results"] if r["selector"] == row["selector"]]
        ots = [r["ot_distance"] for res in runs for r in res["results"] if r["selector"] == row["selector"]]
        assert row["accuracy_mean"] == pytest.approx(statistics.mean(accs))
        assert row["accuracy_std"] == pytest.approx(statistics.stdev(accs))
        assert row["ot_distance_mean"] == pytest.approx(statistics.mean(ots))
        assert f"{row['accuracy_mean']:.4f} ± {row['accuracy_std']:.4f}" in q.stdout  # the printed table
    assert len((out / "report.csv").read_text().strip().splitlines()) == 1 + len(rows)

    import matplotlib.image

    pngs = sorted(out.glob("*.png"))
    assert {x.name for x in pngs} == {"accuracy.png", "ot_distance.png"}  # one d, one P: no line plots
    for png in pngs:
        assert png.read_bytes()[:8] == PNG_MAGIC
        h, w = matplotlib.image.imread(png).shape[:2]
        assert h > 0 and w > 0
    page = (out / "report.html").read_text()
    assert '<table id="results">' in page and "<td>select</td>" in page and "<td>random</td>" in page
    assert page.count("data:image/png;base64,") == 2
    assert "accuracy vs d skipped" in page and "accuracy vs P skipped" in page

    # W&B offline: one run folder per job, all in the group named after the sweep folder, each with the
    # results table (the printed table's rows) and a "selection" artifact holding the run's selections/*.json.
    groups = []
    for job, res in jobs.items():
        (run_dir,) = (job / "wandb").glob("offline-run-*")
        (table_file,) = (run_dir / "files" / "media" / "table").glob("results_*.table.json")
        logged = json.loads(table_file.read_text())
        cols, data = table_rows(res)
        assert logged["columns"] == cols and [row[0] for row in logged["data"]] == [row[0] for row in data]
        accuracy = cols.index("accuracy")
        assert [row[accuracy] for row in logged["data"]] == pytest.approx([row[accuracy] for row in data])
        records = list(wandb_records(next(run_dir.glob("run-*.wandb"))))
        groups += [r.run.run_group for r in records if r.WhichOneof("record_type") == "run"]
        arts = {r.artifact.type: sorted(c.path for c in r.artifact.manifest.contents)
                for r in records if r.WhichOneof("record_type") == "artifact"}
        assert arts["selection"] == ["random.json", "select.json"] and "run_table" in arts
    assert groups == [sweep.name, sweep.name]
