"""Evaluation protocol and experiment knobs: the validation split, best-epoch retraining with early
stopping, seed leakage, the checkpoint grid and the seed corpus's exclude filter."""
import datasets
import pytest
import torch
from omegaconf import OmegaConf

from src.config import run_options
from src.data.loading import _carve_val, mix_in_true
from src.errors import UserError
from src.models import checkpoint_alphas
from src.stages import load_data
from src.training import EpochMonitor


def pool(n):
    return datasets.Dataset.from_dict({"id": [f"t{i}" for i in range(n)], "text": [f"text {i}" for i in range(n)],
                                       "label": [i % 2 for i in range(n)]})


def test_validation_rows_are_disjoint_and_leave_train_as_without_them():
    train0, none = _carve_val(pool(100), 40, 0, rng=3)
    train, val = _carve_val(pool(100), 40, 10, rng=3)
    assert none is None and train["id"] == train0["id"]  # θf's data does not move with n_val
    assert len(val) == 10 and not set(val["id"]) & set(train["id"])


def test_validation_from_train_end_when_the_pool_is_used_up():
    train, val = _carve_val(pool(30), None, 5, rng=0)
    assert len(train) == 25 and len(val) == 5 and not set(val["id"]) & set(train["id"])
    with pytest.raises(UserError, match="leaves no training rows"):
        _carve_val(pool(4), None, 4, rng=0)


def test_seed_never_holds_val_or_test_rows(tiny_cfg):
    data = load_data(run_options(tiny_cfg("dataset.n_val=16")))
    true_ids = set(data.task.train["id"]) | set(data.task.test["id"]) | set(data.task.val["id"])
    assert len(data.task.val) == 16 and not true_ids & set(data.seed["id"])


def test_leak_fraction_mixes_marked_true_rows_into_the_seed():
    seed = datasets.Dataset.from_dict({"id": [f"s{i}" for i in range(20)], "text": [f"seed {i}" for i in range(20)]})
    out = mix_in_true(seed, pool(10), 0.5, rng=0)
    leaked = [i for i, flag in zip(out["id"], out["leaked"]) if flag]
    assert len(out) == 25 and len(leaked) == 5 and all(i.startswith("t") for i in leaked)
    assert mix_in_true(seed, pool(10), 0.0, rng=0) is seed
    with pytest.raises(UserError, match="leak_fraction"):
        mix_in_true(seed, pool(10), 1.5, rng=0)


def test_leak_share_is_reported_per_selector(tiny_cfg, tmp_path):
    from src.pipeline import run

    res = run(tiny_cfg("seed.leak_fraction=0.5", "baselines=[random]", "retrain.select_epoch=final"), tmp_path / "r")
    assert res["n_seed"] == 60 + 20  # 40 true rows × 0.5 on top of the 60 seed rows
    import datasets

    for r in res["results"]:  # the share reported is the share of the written picks that are leaked rows
        path = tmp_path / "r" / "selections" / r["selector"] / "selection.parquet"
        picks = datasets.load_dataset("parquet", data_files=str(path))["train"]
        assert r["leaked_share"] == pytest.approx(sum(picks["leaked"]) / len(picks))


def test_checkpoint_grids():
    assert checkpoint_alphas(4) == checkpoint_alphas(4, "theta_f") == [0.25, 0.5, 0.75, 1.0]
    assert checkpoint_alphas(4, "theta_0") == [0.0, 0.25, 0.5, 0.75]
    assert checkpoint_alphas(1, "theta_0") == [0.0]
    with pytest.raises(UserError, match="checkpoints must be one of"):
        checkpoint_alphas(2, "middle")


def test_exclude_filter_drops_the_task_topics_from_the_harder_seed(tiny_cfg):
    data = load_data(run_options(tiny_cfg("seed=wordnet_other_topics", "seed.max_examples=200")))
    assert not {"noun.animal", "noun.plant", "noun.food", "noun.artifact"} & set(data.seed["group"])


class _Stub(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))


class _Trainer:
    should_stop = False


def test_epoch_monitor_keeps_the_best_epoch_and_stops_early():
    model, scores = _Stub(), iter([0.1, 0.5, 0.4, 0.3, 0.2])
    mon = EpochMonitor(lambda m: next(scores), patience=2)
    module, trainer = type("M", (), {"model": model})(), _Trainer()
    for epoch in range(4):
        model.w.data.fill_(float(epoch))
        mon.on_train_epoch_end(trainer, module)
        if trainer.should_stop:
            break
    assert trainer.should_stop and len(mon.history) == 4  # epochs 3 and 4 did not beat epoch 2
    mon.finish(model)
    assert float(model.w) == 1.0 and mon.summary()["best_epoch"] == 2


def test_select_epoch_is_validated(tiny_cfg):
    with pytest.raises(UserError, match="select_epoch"):
        run_options(tiny_cfg("retrain.select_epoch=best"))
    with pytest.raises(UserError, match="n_val"):
        run_options(tiny_cfg("retrain.select_epoch=val", "dataset.n_val=0"))
    run_options(OmegaConf.merge(tiny_cfg(), {"retrain": {"select_epoch": "test"}}))


def test_sft_with_a_seed_corpus_without_prompts_fails_in_one_line(tiny_cfg, tmp_path):
    """`task=sft seed=nq` used to die on a missing 'prompt' column; a plain-text local seed file stands in for NQ.
    (The command line prints a UserError as one ``error:`` line: tests/test_entrypoint.py.)"""
    from src.errors import UserError
    from src.pipeline import run

    seed = tmp_path / "passages.jsonl"
    seed.write_text("".join(f'{{"answer": "passage number {i}"}}\n' for i in range(30)))
    cfg = tiny_cfg("task=sft", "seed=local", f"seed.path={seed}", "seed.text_field=answer")
    with pytest.raises(UserError) as e:
        run(cfg, tmp_path / "run")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("task=sft needs seed rows with ['prompt']") and "prompt_template" in msg
    assert not (tmp_path / "cache" / "thetaf").exists()


def test_validation_size_may_be_a_fraction_of_train():
    train, val = _carve_val(pool(20), None, 0.1, rng=0)
    assert len(val) == 2 and len(train) == 18


def test_best_epoch_retraining_runs_with_progress_bars_on(tiny_cfg, tmp_path):
    """The per-epoch evaluation runs inside the training loop; with bars on (the default trainer) the
    nested pass must not start a second live display (rich's stack broke on that)."""
    from src.pipeline import run

    res = run(tiny_cfg("trainer.progress_bar=true", "baselines=[random]", "retrain.epochs=2"), tmp_path / "r")
    assert all(r["epochs_run"] >= 1 for r in res["results"])


def test_unseen_true_rows_are_planted_beside_leaked_ones_and_recovery_is_counted(tiny_cfg):
    from src.pipeline import planted_metrics

    data = load_data(run_options(tiny_cfg("seed=wordnet_other_topics", "seed.max_examples=100",
                                          "seed.leak_fraction=0.25", "seed.unseen_rows=10")))
    seed, task = data.seed, data.task
    leaked = [i for i, f in zip(seed["id"], seed["leaked"]) if f]
    unseen = [i for i, f in zip(seed["id"], seed["unseen"]) if f]
    assert len(leaked) == 10 and len(unseen) == 10 and len(seed) == 120
    assert set(leaked) <= set(task.train["id"])                                 # θf trained on these ...
    held_out = set(task.train["id"]) | set(task.val["id"]) | set(task.test["id"])
    assert set(unseen).isdisjoint(held_out) and set(unseen) == set(task.unseen["id"])  # ... and never on these
    assert set(seed["group"][i] for i, f in enumerate(seed["unseen"]) if f) <= set(task.classes)
    picks = [i for i, f in enumerate(seed["leaked"]) if f][:3] + [i for i, f in enumerate(seed["unseen"]) if f][:1]
    picks += [i for i in range(len(seed)) if not (seed["leaked"][i] or seed["unseen"][i])][:4]
    m = planted_metrics(seed, picks)
    assert m == {"leaked_share": 3 / 8, "unseen_share": 1 / 8, "planted_share": 4 / 8, "planted_recall": 4 / 20}
    assert planted_metrics(load_data(run_options(tiny_cfg())).seed, picks) == {}  # nothing planted: nothing to count
