"""``run(cfg)``: the whole experiment as a sequence of stages, returning the results dict.

The config is read once, here, into the run's options (``src.config.run_options``); stages, tasks,
the gradient pass and selectors receive those, never the config. Upstream stages (src/stages.py)
are cached; per-selector work (select → retrain → evaluate → OT distance) is cheap enough to redo,
and is what a comparison varies.
"""
from __future__ import annotations

import json
import logging
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from src.checks import head_readers, preflight
from src.config import run_options, to_plain
from src.errors import UserError
from src.metrics import Embedder, ot_distance
from src.options import RunOptions, SourceOptions
from src.selection_io import SelectionWriter
from src.selectors.base import SelectionContext, check_k
from src.selectors.registry import build_selectors
from src.stages import autolabel, gradient_rows, load_models, load_task_data
from src.training import EpochMonitor

log = logging.getLogger(__name__)


class Timer(dict):
    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        yield
        self[name] = round(time.perf_counter() - t0, 3)
        log.info("stage %s took %.1fs", name, self[name])


def run(cfg, out_dir: Path, logger=None) -> dict:
    """An experiment, or (mode=recover) a recovery: without true data it stops after selection."""
    opts = run_options(cfg)
    timer = Timer()
    selectors = build_selectors(opts.selectors)
    preflight(opts, selectors)
    with timer("data"):
        data, task = load_task_data(opts)
    check_seed_columns(task, data.seed, opts.seed)
    if any(s.name != "expert" for s in selectors.values()):
        check_k(opts.k, len(data.seed))
    with timer("models"):
        pair = load_models(opts, data, task, check_head=bool(head_readers(opts, selectors)))
    with timer("autolabel"):
        labels = autolabel(opts, pair, data, task)
    evaluate = data.task.train is not None
    contexts = selection_contexts(opts, selectors, pair, data, labels, task, timer, evaluate)
    ctx = contexts[""]
    writer = SelectionWriter(out_dir, task, data, labels, ctx, selectors)
    if not evaluate:  # recover mode without true data: the selections are the result
        return recover_results(opts, task, data, selectors, writer, timer, to_plain(cfg), contexts)

    test = data.task.test
    with timer("eval/reference"):
        reference = {f"theta0_{k}": v for k, v in task.evaluate(pair.load(0.0), pair.tokenizer, test).items()}
        reference.update({f"thetaf_{k}": v for k, v in task.evaluate(pair.load(1.0), pair.tokenizer, test).items()})
    ev, g = opts.evaluation, opts.gradient
    with timer("embed/true"):
        embedder = Embedder(ev.embedder, ev.embed_batch_size, ev.embed_max_length)
        true_emb = embedder(task.ot_texts(task.true_examples(data.task.train,
                                                             range(min(ev.max_true, len(data.task.train))))))
    rows = []
    sel_dir = out_dir / "selections"
    sel_dir.mkdir(parents=True, exist_ok=True)
    for name, selector in selectors.items():
        sctx = contexts[_options_key(selector)]
        with timer(f"{name}/select"):
            sel = selector(sctx, opts.k)
        idx = sel.indices.tolist()
        examples = (task.true_examples(data.task.train, idx) if sel.source == "true"
                    else task.seed_examples(data.seed, labels, idx))
        writer(name, sel, examples, sctx)  # before retraining: the picks are kept even if it fails
        monitor = epoch_monitor(opts, task, pair.tokenizer, data.task)
        with timer(f"{name}/retrain"):
            model = task.train(pair.fresh(0.0), pair.tokenizer, examples, opts.retrain, prefix=f"retrain/{name}",
                               logger=logger or False, monitor=monitor)
        with timer(f"{name}/eval"):
            metrics = task.evaluate(model, pair.tokenizer, test)
            otd = ot_distance(embedder(task.ot_texts(examples)), true_emb, ev.ot_method, ev.ot_reg)
        pool = data.task.train if sel.source == "true" else data.seed
        rows.append({"selector": name, "k": len(idx), "d": g.d, "P": g.P, "rng": opts.rng, **metrics,
                     "ot_distance": otd, "class_balance": task.composition(examples, data.task),
                     "groups": _groups(pool, idx), **planted_metrics(pool, idx),
                     **(monitor.summary() if monitor else {}), **sel.info})
        (sel_dir / f"{name}.json").write_text(json.dumps({"source": sel.source, "indices": idx,
                                                           "ids": [pool["id"][i] for i in idx]}))
        log.info("%s: %s, OT distance %.4f", name, ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()), otd)
    return {"config": to_plain(cfg), "task": task.name, "metric": task.metric, "results": rows,
            "reference": reference, "timings": dict(timer), "n_seed": len(data.seed),
            "n_true": len(data.task.train), "classes": data.task.classes}


def _options_key(selector) -> str:
    return json.dumps(selector.gradients, sort_keys=True) if selector.needs_gradients and selector.gradients else ""


def selection_contexts(opts: RunOptions, selectors: dict, pair, data, labels, task, timer, evaluate: bool) -> dict:
    """One ``SelectionContext`` per distinct set of gradient options the selectors select on ("": the run's
    own); each gradient store is computed (or found in the cache) once, and stays on disk."""
    sel = opts.selection
    contexts = {}
    for key in dict.fromkeys(["", *(_options_key(s) for s in selectors.values())]):
        grads = target = None
        grads_key = ""
        users = [s for s in selectors.values() if s.needs_gradients and _options_key(s) == key]
        if users:
            g = opts.gradient.with_selector(json.loads(key) if key else {})
            with timer("gradients" + (f"/{users[0].name}" if key else "")):
                grads, target, grads_key = gradient_rows(opts, pair, data, labels, task, g)
        contexts[key] = SelectionContext(
            n_seed=len(data.seed), labels=labels.get("labels"), logp_f=labels["logp_f"], logp_0=labels["logp_0"],
            stats={k.removeprefix("stat_"): v for k, v in labels.items() if k.startswith("stat_")},
            n_true=len(data.task.train) if evaluate else 0, grads=grads, target=target, rng=opts.rng,
            precision=sel.precision, block_rows=int(sel.block_rows), progress=bool(sel.progress),
            state_dir=Path(opts.cache_dir) / "selection", grads_key=grads_key,
            checkpoint_every_s=float(sel.checkpoint_every_s))
    return contexts


def recover_results(opts: RunOptions, task, data, selectors: dict, writer, timer, config: dict,
                    contexts: dict) -> dict:
    """Select with every selector and write each selection; nothing to retrain or score against."""
    rows = []
    for name, selector in selectors.items():
        sctx = contexts[_options_key(selector)]
        with timer(f"{name}/select"):
            sel = selector(sctx, opts.k)
        ds = writer(name, sel, task.seed_examples(data.seed, writer.labels, sel.indices.tolist()), sctx)
        folder = writer.out_dir / "selections" / name
        rows.append({"selector": name, "k": len(ds), "d": opts.gradient.d, "P": opts.gradient.P, "rng": opts.rng,
                     "objective": ds["objective"][-1], "selection": str(folder / "selection.parquet"),
                     "groups": _groups(data.seed, sel.indices.tolist()),
                     **planted_metrics(data.seed, sel.indices.tolist()), **sel.info})
        log.info("%s: %d picks written to %s", name, len(ds), folder)
    return {"config": config, "mode": "recover", "task": task.name, "results": rows, "timings": dict(timer),
            "n_seed": len(data.seed), "scores": str(writer.out_dir / "scores.parquet"),
            "classes": data.task.classes}


def check_seed_columns(task, seed, source: SourceOptions) -> None:
    """A task that reads more than text from a seed row (SFT: its prompt) says so in ``seed_columns``."""
    missing = [c for c in getattr(task, "seed_columns", ()) if c not in seed.column_names]
    if missing:
        raise UserError(f"task={task.name} needs seed rows with {missing}, and seed corpus '{source.path}' has "
                        f"only {seed.column_names}: give the seed config a prompt_template built from its fields, "
                        f"e.g. +seed.prompt_template='Query: {{{source.text_field or 'text'}}}\\nPassage:'")


def epoch_monitor(opts: RunOptions, task, tokenizer, data) -> EpochMonitor | None:
    """How retraining picks its epoch (``retrain.select_epoch``): ``final`` (the last epoch), ``val``
    (the best epoch on the validation split carved from the true data; no test leakage) or
    ``test`` (the best epoch on the test split: the paper's protocol, for comparison only, since
    it reports a maximum over test scores)."""
    mode = opts.retrain.select_epoch
    if mode == "final":
        return None
    split = data.val if mode == "val" else data.test
    sign = 1.0 if task.higher_is_better else -1.0
    # The evaluation runs inside the training loop: a second live progress display would break the
    # first (rich keeps one stack of them), so the nested pass runs without one.
    quiet = task.with_trainer(replace(task.opts.trainer, progress_bar=False))

    def score(model) -> float:
        return sign * quiet.evaluate(model, tokenizer, split)[task.metric]

    return EpochMonitor(score, patience=opts.retrain.patience, sign=sign)


def planted_metrics(pool, idx) -> dict:
    """Recovery, measured directly, when true-distribution rows were planted in the seed corpus:
    ``planted_share`` (precision: the share of the picks that are planted rows, ``leaked`` ones θf trained on
    or ``unseen`` ones of the same distribution), ``planted_recall`` (the share of the planted rows picked;
    equal to the precision when k is the number planted), and the two kinds apart (``leaked_share``,
    ``unseen_share``: a selector that found θf's own rows rather than its distribution picks more of the first)."""
    flags = {c: pool[c] for c in ("leaked", "unseen") if c in pool.column_names}
    if not flags:
        return {}
    picked = {c: sum(bool(v[i]) for i in idx) for c, v in flags.items()}
    planted = sum(sum(map(bool, v)) for v in flags.values())
    k = max(1, len(idx))
    out = {f"{'leaked' if c == 'leaked' else 'unseen'}_share": n / k for c, n in picked.items()}
    out.update(planted_share=sum(picked.values()) / k, planted_recall=sum(picked.values()) / max(1, planted))
    return out


def _groups(pool, idx) -> dict | None:
    """Share of each source group (e.g. WordNet lexicographer file) among the picks, when the data has one."""
    if "group" not in pool.column_names:
        return None
    groups = [pool["group"][i] for i in idx]
    return {g: groups.count(g) / len(groups) for g in sorted(set(groups))}
