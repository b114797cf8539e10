"""The expensive upstream stages, each cached on disk by a hash of what produced it.

data ──► models (θ0, θf) ──► autolabel ──► gradients (+ target)

Every stage reads the run's options (``src.options.RunOptions``), never the config; each key hashes
the options that produced the stage and θ0's own key (``base_key``). Task-specific work (how to
build θ0, label, differentiate) is delegated to a task object (``src.tasks``); caching, checksums
and the gradient store live here. A sweep that changes only the selector or k finds all of these
in ``cache_dir``.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from src.cache import atomic_write_bytes, atomic_write_json, file_sha256, stable_hash, text_fingerprint
from src.data.loading import TaskData, load_seed, load_task, mix_in_true
from src.finetuned import check_head_changed, classes_without_data, is_adapter, merge_adapter
from src.gradients.exact import exact_rows
from src.gradients.runner import GradientPassModule, gradient_pass
from src.models import ModelPair, check_compatible, check_same_family, checkpoint_alphas
from src.options import GradientOptions, RunOptions
from src.selectors.rows import StoreRows, resolve_device
from src.store import STORE_DTYPES, ShardStore
from src.tasks import get_task, task_class

log = logging.getLogger(__name__)


@dataclass
class Data:
    task: TaskData
    seed: object  # datasets.Dataset with text, id (and prompt for SFT)


def load_data(opts: RunOptions) -> Data:
    """The true data (absent in recover mode without a dataset: ``task.train`` is None) and the seed corpus."""
    kind = task_class(opts.task.name).data_kind  # what the task reads: see src.data.loading
    if not opts.has_true_data:
        seed = load_seed(opts.seed, opts.rng, kind=kind)
        log.info("data: no true data (mode=recover); seed corpus %d examples", len(seed))
        classes = classes_without_data(opts.classes, opts.task.model.finetuned)
        return Data(TaskData(train=None, test=None, classes=classes), seed)
    task = load_task(opts.dataset, opts.rng, kind, n_unseen=int(opts.seed.unseen_rows or 0))
    splits = [s for s in (task.train, task.test, task.val, task.unseen) if s is not None]
    exclude = set().union(*(s["id"] for s in splits)) if opts.seed.exclude_true else set()
    seed = mix_in_true(load_seed(opts.seed, opts.rng, exclude, kind), task.train, opts.seed.leak_fraction or 0,
                       opts.rng, unseen=task.unseen)
    log.info("data: %d true train / %d val / %d test examples; seed corpus %d examples", len(task.train),
             0 if task.val is None else len(task.val), len(task.test), len(seed))
    return Data(task, seed)


def load_task_data(opts: RunOptions):
    """(data, task): the data, and the task that reads it (a task needs the classes the data names)."""
    data = load_data(opts)
    return data, get_task(opts.task, data.task.classes)


def folder_stamp(path: str) -> list | None:
    """(name, size, mtime) of every file in a local model folder; None for a hub id."""
    p = Path(path)
    if not p.is_dir():
        return None
    return sorted((str(f.relative_to(p)), f.stat().st_size, int(f.stat().st_mtime)) for f in p.rglob("*") if f.is_file())


def cached(path: Path, compute, what: str) -> dict:
    """Load a checksummed safetensors file (+ JSON extras), or compute and write it.

    ``compute`` returns tensors, plus optional non-tensor values (e.g. generated texts) kept in
    the sidecar JSON. A file whose checksum does not match is recomputed, never used.
    """
    meta = path.with_suffix(".json")
    if path.exists() and meta.exists():
        try:
            m = json.loads(meta.read_text())
            if m["sha256"] == file_sha256(path):
                log.info("%s: reusing %s", what, path)
                return {**load_file(path), **m.get("extra", {})}
        except (OSError, KeyError, json.JSONDecodeError):
            pass
        log.warning("%s: cache file %s is corrupt or incomplete, recomputing", what, path)
    out = compute()
    tensors = {k: v.contiguous() for k, v in out.items() if isinstance(v, torch.Tensor)}
    extra = {k: v for k, v in out.items() if not isinstance(v, torch.Tensor)}
    atomic_write_bytes(path, save(tensors))
    atomic_write_json(meta, {"sha256": file_sha256(path), "what": what, "extra": extra})
    return out


def base_key(opts: RunOptions) -> str:
    """θ0's own key: the model options, the embedded LM's pretraining config when θ0 is that LM (its weights
    are made from ``base_lm.*``), and the trainer's precision (θf is finetuned, and every log-likelihood and
    gradient computed, at that precision). Every downstream key includes it through θf's key."""
    t = opts.task
    made = str(t.model.name_or_path) == "base_lm"
    return stable_hash("theta0", t.model, t.base_lm if made else None, t.trainer.precision)


def load_models(opts: RunOptions, data: Data, task, check_head: bool = True) -> ModelPair:
    """θ0 (from the task) and θf (given by path, or finetuned on the true data and cached). ``check_head``:
    fail if a given θf left the last layer unchanged (False when no selector reads that layer alone)."""
    model, tok = task.build_base(data.task)
    state0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    head, given = opts.task.model.head, opts.task.model.finetuned
    if given:
        if is_adapter(given):  # θf = θ0 + the adapter's merged update
            statef = merge_adapter(model, given)
        else:
            check_same_family(getattr(model, "config", None), given)
            statef = task.load_finetuned(given, data.task).state_dict()
        # The folder's file stamps and the base are in the key: a θf rewritten in place, or another θ0
        # under the same θf, must not reuse autolabels (log p_θ0) or gradients made from the old one.
        key = stable_hash("given", given, opts.rng, base_key(opts), folder_stamp(given))
    else:
        key = stable_hash("thetaf", task.name, base_key(opts), opts.dataset, opts.finetune, opts.rng, task.fields())

        def finetune():
            log.info("models: finetuning θ0 on %d true examples to make θf (cached as %s)", len(data.task.train), key)
            m, _ = task.build_base(data.task)
            task.train(m, tok, task.true_examples(data.task.train), opts.finetune, prefix="finetune")
            return {k: v.detach().clone() for k, v in m.state_dict().items()}

        statef = cached(Path(opts.cache_dir) / "thetaf" / f"{key}.safetensors", finetune, "θf")
    check_compatible(state0, statef)
    if given and check_head:
        check_head_changed(state0, statef, head, given)
    return ModelPair(model=model, tokenizer=tok, state0=state0, statef=statef, head_name=head, key=key)


def autolabel(opts: RunOptions, pair: ModelPair, data: Data, task) -> dict:
    """θf's labels (or generated responses) for the seed corpus, with log-likelihoods under θf and θ0."""
    # The texts' fingerprint, not the config, pins the corpus: exclusion and sampling happen before this.
    # The task's fields (prompt, label words, classes, decoding) are in it whether θf was made or given.
    key = stable_hash("autolabel", "token-stats", task.name, pair.key, opts.task.model.max_length, task.fields(),
                      text_fingerprint(data.seed["text"]))
    out = cached(Path(opts.cache_dir) / "autolabel" / f"{key}.safetensors", lambda: task.autolabel(pair, data.seed),
                 "autolabel")
    out["key"] = key
    log.info("autolabel: %s", task.describe_autolabels(out, data.task))
    return out


def _gradient_store(opts: RunOptions, g: GradientOptions, pair: ModelPair, data: Data, labels: dict, task):
    """The task's gradient spec for the gradient options ``g`` and the store it keys: the autolabels (hence
    θf, the corpus and the task's fields), the checkpoints, the spec (projector, head, preconditioner, its
    own key) and the dtype."""
    alphas = checkpoint_alphas(g.P, g.checkpoints)
    spec = task.gradient_spec(pair, data.seed, labels, alphas, g)
    store_cfg = {"autolabel": labels["key"], "alphas": alphas, "spec": spec.describe(), "dtype": g.store_dtype}
    root = Path(opts.cache_dir) / "grads" / stable_hash(store_cfg)
    store = ShardStore(root, store_cfg, n_rows=len(data.seed), shard_size=g.shard_size)
    return store, spec, alphas


def _fill(opts: RunOptions, g: GradientOptions, pair, data, labels, store, spec, alphas, load: bool):
    """Fill the store; returns the target ([d]) and, with ``load``, the rows [P, N, d]."""
    parts = [GradientPassModule.part(j) for j in range(1, len(alphas) + 1)]
    dtype = STORE_DTYPES[g.store_dtype]
    if spec.exact:  # one joint embedding of every checkpoint's gradients: computed whole, stored like the rest
        def embed_all():
            rows, target = exact_rows(pair, alphas, spec, data.seed, labels, int(g.batch_size), g.exact_max_rows)
            for j, part in enumerate(parts):
                for i in range(store.n_shards):
                    block = rows[j, store.rows(i).start:store.rows(i).stop].to(dtype)
                    store.write(part, i, {"g": block, "sq": block.double().pow(2).sum(-1).float()})
            return {"t": target}

        store.root.mkdir(parents=True, exist_ok=True)
        tpath = store.root / "exact_target.safetensors"
        if any(store.missing(p) for p in parts):  # rows and target are one embedding: never mix two
            tpath.unlink(missing_ok=True)
        target = cached(tpath, embed_all, "exact target")["t"]
        return target, (store.load_stacked(parts, "g") if load else None)
    # One Lightning predict loop over the missing (checkpoint, shard) items, on whatever accelerator /
    # strategy ``trainer`` names (DDP ranks write disjoint shards).
    G = gradient_pass(pair, alphas, store, spec, data.seed, labels, trainer=opts.task.trainer,
                      batch_size=g.batch_size, store_dtype=dtype, load=load)
    return spec.target, (G if load else None)


def gradients(opts: RunOptions, pair: ModelPair, data: Data, labels: dict, task,
              g: GradientOptions | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Projected last-layer gradients at θ̂_1..θ̂_P ([P, N, d], in RAM, store dtype) and the projected target
    ([d]), for the gradient options ``g`` (default: the run's own)."""
    g = g or opts.gradient
    store, spec, alphas = _gradient_store(opts, g, pair, data, labels, task)
    target, G = _fill(opts, g, pair, data, labels, store, spec, alphas, load=True)
    return G, target


def gradient_rows(opts: RunOptions, pair: ModelPair, data: Data, labels: dict, task, g: GradientOptions | None = None):
    """As ``gradients``, but the matrix stays on disk: (a ``StoreRows`` source read shard by shard,
    memory-mapped, on ``selection.device``; the projected target [d]; the store's hash)."""
    g = g or opts.gradient
    store, spec, alphas = _gradient_store(opts, g, pair, data, labels, task)
    target, _ = _fill(opts, g, pair, data, labels, store, spec, alphas, load=False)
    device = resolve_device(opts.selection.device, opts.task.trainer.accelerator)
    rows = StoreRows(store, [GradientPassModule.part(j) for j in range(1, len(alphas) + 1)], "g", device=device)
    log.info("gradients: [P, N, d] = %s %s on disk, selecting on %s%s", list(rows.shape),
             str(rows.dtype).removeprefix("torch."), device, " (resident)" if rows.resident is not None else "")
    return rows, target, store.root.name
