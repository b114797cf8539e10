"""Recover mode: θ0, θf and a seed corpus in, the selection out, no true data needed.

``mode=recover`` (conf/mode/recover.yaml) runs the same ``src.pipeline.run`` as an experiment;
what differs is only that the true data (``dataset``) is optional. Without it the pipeline stops
after selection (nothing to retrain against or score on); with it, it evaluates exactly as an
experiment does. This module holds the checks that make a user's input fail at once, before any
model is loaded, and what stands in for the true data when there is none.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from src.errors import UserError
from src.finetuned import check_exists, check_finetuned, is_adapter

log = logging.getLogger(__name__)


def has_true_data(cfg) -> bool:
    return cfg.get("dataset") is not None


def preflight(cfg, selectors: dict) -> None:
    """Cheap checks of everything a user names (mode, devices, model paths, selectors vs data)."""
    mode = cfg.get("mode", "experiment")
    if mode not in ("experiment", "recover"):
        raise UserError(f"mode must be 'experiment' or 'recover', got '{mode}'")
    check_device(cfg.trainer)
    finetuned = cfg.model.get("finetuned")
    if mode == "recover" and not finetuned:
        raise UserError("mode=recover needs θf: set model.finetuned to a model folder, hub id or PEFT adapter folder")
    if not has_true_data(cfg):
        if mode != "recover":
            raise UserError("an experiment needs the true data (dataset=...); use mode=recover to select without it")
        needs_true = [name for name, s in selectors.items() if s.needs_true_data]
        if needs_true:
            raise UserError(f"selector(s) {needs_true} pick from the true data, which mode=recover without a "
                            "dataset does not have; drop them from baselines or give dataset=...")
    check_exists(str(cfg.model.name_or_path), "model.name_or_path")
    check_finetuned(finetuned, cfg.model.head)


def check_device(trainer) -> None:
    """``trainer=gpu`` on a machine without one: one line instead of Lightning's traceback."""
    import torch

    acc = str(trainer.accelerator)
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={acc} but torch sees no CUDA GPU on this machine; use trainer=cpu")
    if acc == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.accelerator=mps but this machine has no Apple MPS device; use trainer=cpu")
    devices = trainer.get("devices")
    if acc in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise UserError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")


def classes_without_data(cfg) -> list[str]:
    """The class names when there is no true data: ``classes=[...]`` if set, else the id2label of a θf
    with a sequence-classification head.

    Tasks without classes (SFT, LM) ignore them. A causal LM's config carries a placeholder id2label
    (LABEL_0, LABEL_1) that names no real classes, and a PEFT adapter folder has no config.json of
    its own: label-word classification and adapters take their classes from ``classes``.
    """
    if cfg.get("classes"):
        return [str(c) for c in cfg.classes]
    finetuned = cfg.model.get("finetuned")
    path = Path(str(finetuned)) / "config.json"
    if finetuned and not is_adapter(str(finetuned)) and path.is_file():
        config = json.loads(path.read_text())
        if any("SequenceClassification" in a for a in config.get("architectures") or []):
            id2label = config.get("id2label") or {}
            return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return []


def recover_results(cfg, task, data, selectors: dict, writer, timer, config: dict) -> dict:
    """Select with every selector and write each selection; nothing to retrain or score against."""
    rows = []
    for name, selector in selectors.items():
        with timer(f"{name}/select"):
            sel = selector(writer.ctx, cfg.k)
        ds = writer(name, sel, task.seed_examples(data.seed, writer.labels, sel.indices.tolist()))
        folder = writer.out_dir / "selections" / name
        rows.append({"selector": name, "k": len(ds), "d": cfg.d, "P": cfg.P, "rng": cfg.rng,
                     "objective": ds["objective"][-1], "selection": str(folder / "selection.parquet"), **sel.info})
        log.info("%s: %d picks written to %s", name, len(ds), folder)
    return {"config": config, "mode": "recover", "task": task.name, "results": rows, "timings": dict(timer),
            "n_seed": len(data.seed), "scores": str(writer.out_dir / "scores.parquet"),
            "classes": data.task.classes}
