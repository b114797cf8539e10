"""The gradient pass as one Lightning predict loop over (checkpoint, shard) work items:
two DDP ranks on CPU, resume after a kill, duplicated items, low precision."""
import json
import logging
from dataclasses import replace

import pytest
import torch
from conftest import compose_cfg
from torch.utils.data import DataLoader

from src.config import run_options
from src.stages import autolabel, gradients, load_models, load_task_data
from src.store import ShardStore

SHARD = ["gradient.shard_size=8"]  # 60 seed rows -> 8 shards per checkpoint, 16 work items at P=2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """θ0/θf, autolabels and the single-process reference matrix, shared by the tests here."""
    tmp = tmp_path_factory.mktemp("pass")
    cfg = run_options(compose_cfg(SHARD, tmp))
    data, task = load_task_data(cfg)
    pair = load_models(cfg, data, task)
    labels = autolabel(cfg, pair, data, task)
    G, t = gradients(cfg, pair, data, labels, task)
    assert G.shape == (2, 60, 16) and G.dtype == torch.float32
    return cfg, task, data, pair, labels, G


def _with(cfg, cache_dir, **trainer):
    return replace(cfg, cache_dir=str(cache_dir), task=replace(cfg.task, trainer=replace(cfg.task.trainer, **trainer)))


def _sidecars(cache_dir):
    return [json.loads(p.read_text()) for p in (cache_dir / "grads").glob("*/ckpt*.json")]


def test_two_ddp_ranks_on_cpu_write_their_own_shards_and_match_one_process(setup, tmp_path):
    cfg, task, data, pair, labels, G = setup
    ddp = _with(cfg, tmp_path / "ddp", accelerator="cpu", devices=2, strategy="ddp_spawn")
    G2, _ = gradients(ddp, pair, data, labels, task)
    torch.testing.assert_close(G2, G, rtol=1e-5, atol=1e-5)
    recs = _sidecars(tmp_path / "ddp")
    assert len(recs) == 16
    # Lightning's (unrepeated) distributed sampler deals the sorted items out round-robin: 8 each.
    by_rank = {r: sum(1 for x in recs if x["rank"] == r) for r in (0, 1)}
    assert by_rank == {0: 8, 1: 8}


class Killed(Exception):
    pass


def test_killed_pass_resumes_recomputing_only_the_missing_shards(setup, tmp_path, monkeypatch, caplog):
    cfg, task, data, pair, labels, G = setup
    run = _with(cfg, tmp_path / "resume")
    writes = []
    real_write = ShardStore.write

    def dying_write(self, part, i, tensors, rank=0):
        if len(writes) == 5:
            raise Killed("simulated kill after 5 work items")
        writes.append((part, i))
        real_write(self, part, i, tensors, rank)

    monkeypatch.setattr(ShardStore, "write", dying_write)
    with pytest.raises(Killed):
        gradients(run, pair, data, labels, task)
    assert len(writes) == 5 and len(_sidecars(tmp_path / "resume")) == 5

    writes.clear()
    monkeypatch.setattr(ShardStore, "write", lambda self, *a, **k: (writes.append(a[:2]), real_write(self, *a, **k)))
    with caplog.at_level(logging.INFO):
        G2, _ = gradients(run, pair, data, labels, task)
    assert len(writes) == 16 - 5  # only the shards the killed run had not finished
    assert "checkpoint 1/2 (alpha=0.500): 3 of 8 shards computed" in caplog.text
    assert "checkpoint 2/2 (alpha=1.000): 8 of 8 shards computed" in caplog.text
    torch.testing.assert_close(G2, G, rtol=1e-5, atol=1e-6)


def test_duplicated_work_items_are_skipped_not_recomputed(setup, tmp_path):
    from src.gradients.runner import GradientPassModule, _first, plan
    from src.models import checkpoint_alphas
    from src.training import build_trainer

    cfg, task, data, pair, labels, G = setup
    alphas = checkpoint_alphas(cfg.gradient.P)
    spec = task.gradient_spec(pair, data.seed, labels, alphas, cfg.gradient)  # as stages.gradients
    store = ShardStore(tmp_path / "dup", {"test": "dup"}, n_rows=len(data.seed), shard_size=8)
    items = plan(store, cfg.gradient.P)
    assert len(items) == 16
    module = GradientPassModule(pair, checkpoint_alphas(cfg.gradient.P), store, spec, data.seed, labels,
                                batch_size=cfg.gradient.batch_size)
    # What a padding sampler would do: every item twice (here in the same process, one after another).
    loader = DataLoader(items + items, batch_size=1, collate_fn=_first)
    build_trainer(cfg.task.trainer, logger=False).predict(module, loader, return_predictions=False)
    assert module.stats == {"computed": 16, "skipped": 16, "loads": 2}  # θ̂_j swapped in once per checkpoint
    G2 = store.load_stacked(["ckpt1", "ckpt2"])
    torch.testing.assert_close(G2, G, rtol=1e-5, atol=1e-6)


def test_mixed_precision_forward_and_half_store_on_cpu(setup, tmp_path):
    """The autocast path (bf16-mixed, as on GPU) and a float16 store, exercised on CPU."""
    cfg, task, data, pair, labels, G = setup
    low = _with(cfg, tmp_path / "bf16", precision="bf16-mixed")
    low = replace(low, gradient=replace(low.gradient, store_dtype="float16"))
    G2, _ = gradients(low, pair, data, labels, task)
    assert G2.dtype == torch.float16 and G2.shape == G.shape
    recs = _sidecars(tmp_path / "bf16")
    assert {r["dtypes"]["g"] for r in recs} == {"float16"} and {r["dtypes"]["sq"] for r in recs} == {"float32"}
    err = (G2.float() - G).flatten(1).norm(dim=1) / G.flatten(1).norm(dim=1)
    assert float(err.max()) < 0.05  # bf16 activations: close to, not equal to, the float32 pass
    assert not torch.equal(G2.float(), G.half().float())  # the forward really ran in bf16
