"""``run(cfg)``: the whole experiment as a sequence of stages, returning the results dict.

Upstream stages (src/stages.py) are cached; per-selector work (select → retrain →
evaluate → OT distance) is cheap enough to redo, and is what a comparison varies.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.errors import UserError, did_you_mean
from src.metrics import Embedder, ot_distance
from src.selectors.base import SelectionContext, Selector, check_k
from src.stages import autolabel, gradients, load_data, load_models, to_plain
from src.training import accuracy, fit_classifier

log = logging.getLogger(__name__)
CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


class Timer(dict):
    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self[name] = round(time.perf_counter() - t0, 3)
        log.info("stage %s took %.1fs", name, self[name])


def build_selectors(cfg) -> dict[str, Selector]:
    """The main ``selector`` plus every name in ``baselines``, each from conf/selector/<name>.yaml."""
    known = sorted(p.stem for p in (CONF_DIR / "selector").glob("*.yaml"))
    main = _instantiate(cfg.selector, "selector")
    sels = {main.name: main}
    for name in cfg.get("baselines") or []:
        if name not in known:
            raise UserError(f"Unknown selector '{name}'.{did_you_mean(name, known)}")
        if name not in sels:
            sels[name] = _instantiate(OmegaConf.load(CONF_DIR / "selector" / f"{name}.yaml"), name)
    return sels


def _instantiate(sel_cfg, name) -> Selector:
    try:
        sel = instantiate(sel_cfg)
    except Exception as e:
        raise UserError(f"could not build selector '{name}' from {OmegaConf.to_container(sel_cfg)}: {e}") from e
    if not isinstance(sel, Selector):
        raise UserError(f"selector '{name}' is a {type(sel).__name__}, not a src.selectors.base.Selector")
    return sel


def validate(cfg) -> None:
    """Cheap checks before any expensive stage, so bad input costs nothing."""
    if int(cfg.d) <= 0:
        raise UserError(f"projection dimension d must be positive, got d={cfg.d}")
    if int(cfg.P) < 1:
        raise UserError(f"P (number of synthetic checkpoints) must be >= 1, got P={cfg.P}")
    if int(cfg.k) <= 0:
        raise UserError(f"k (selection size) must be positive, got k={cfg.k}")
    if cfg.task != "classification":
        raise UserError(f"task '{cfg.task}' is not supported by this version (supported: classification)")


def run(cfg, out_dir: Path, logger=None) -> dict:
    validate(cfg)
    timer = Timer()
    selectors = build_selectors(cfg)
    with timer("data"):
        data = load_data(cfg)
    if any(s.name != "expert" for s in selectors.values()):
        check_k(cfg.k, len(data.seed))
    with timer("models"):
        pair = load_models(cfg, data)
    with timer("autolabel"):
        labels = autolabel(cfg, pair, data)
    grads = target = None
    if any(s.needs_gradients for s in selectors.values()):
        with timer("gradients"):
            grads, target = gradients(cfg, pair, data, labels)
    ctx = SelectionContext(n_seed=len(data.seed), labels=labels.labels, logp_f=labels.logp_f, logp_0=labels.logp_0,
                           n_true=len(data.task.train), grads=grads, target=target, rng=cfg.rng)

    test, ev = data.task.test, dict(batch_size=cfg.retrain.eval_batch_size, max_length=cfg.model.max_length,
                                    trainer_cfg=cfg.trainer)
    with timer("eval/reference"):
        reference = {"theta0_accuracy": accuracy(pair.load(0.0), pair.tokenizer, test["text"], test["label"], **ev),
                     "thetaf_accuracy": accuracy(pair.load(1.0), pair.tokenizer, test["text"], test["label"], **ev)}
    with timer("embed/true"):
        embedder = Embedder(cfg.embedder.name_or_path, cfg.embedder.batch_size, cfg.embedder.max_length)
        true_texts = data.task.train["text"][: cfg.ot.max_true]
        true_emb = embedder(true_texts)

    rows, n_cls = [], len(data.task.classes)
    sel_dir = out_dir / "selections"
    sel_dir.mkdir(parents=True, exist_ok=True)
    for name, selector in selectors.items():
        with timer(f"{name}/select"):
            sel = selector(ctx, cfg.k)
        idx = sel.indices.tolist()
        if sel.source == "true":
            texts, y = [data.task.train["text"][i] for i in idx], [data.task.train["label"][i] for i in idx]
        else:
            texts, y = [data.seed["text"][i] for i in idx], labels.labels[sel.indices].tolist()
        with timer(f"{name}/retrain"):
            model = fit_classifier(pair.fresh(0.0), pair.tokenizer, texts, y, cfg.retrain, cfg.trainer,
                                   rng=cfg.rng, logger=logger or False, prefix=f"retrain/{name}")
        with timer(f"{name}/eval"):
            acc = accuracy(model, pair.tokenizer, test["text"], test["label"], **ev)
            otd = ot_distance(embedder(texts), true_emb, cfg.ot.method, cfg.ot.reg)
        balance = (torch.bincount(torch.as_tensor(y), minlength=n_cls).float() / len(y)).tolist()
        rows.append({"selector": name, "k": len(idx), "d": cfg.d, "P": cfg.P, "rng": cfg.rng, "accuracy": acc,
                     "ot_distance": otd, "class_balance": dict(zip(data.task.classes, balance)), **sel.info})
        (sel_dir / f"{name}.json").write_text(json.dumps({"source": sel.source, "indices": idx,
                                                           "ids": [data.seed["id"][i] for i in idx]
                                                           if sel.source == "seed" else None}))
        log.info("%s: accuracy %.4f, OT distance %.4f", name, acc, otd)
    return {"config": to_plain(cfg), "results": rows, "reference": reference, "timings": dict(timer),
            "n_seed": len(data.seed), "n_true": len(data.task.train), "classes": data.task.classes}
