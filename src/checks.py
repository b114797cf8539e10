"""Checks of a run's input before anything expensive, in every mode, and what stands in for the true
data when there is none (``mode=recover``).

``validate`` checks every option with a fixed set of values or a range (d, P, k, checkpoints,
store dtype, selection and gradient options, the task's own) and ``preflight`` what a user names
(mode, devices, model paths, selectors against the data), so bad input fails in one line before
any data or model is loaded, and nothing is computed for minutes before a later stage rejects it.

``mode=recover`` (conf/mode/recover.yaml) runs the same ``src.pipeline.run`` as an experiment; the
true data (``dataset``) is then optional: without it the pipeline stops after selection.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from src.errors import UserError
from src.finetuned import check_exists, check_finetuned, is_adapter

log = logging.getLogger(__name__)


TRAINABLE = ("all", "head")  # finetune.train / retrain.train: every parameter, or the last layer alone


def _one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise UserError(f"{name} must be one of {list(allowed)}, got {value!r}")


def validate(cfg) -> None:
    """Every option with a fixed set of values, and every size, before any compute."""
    from src.models import CHECKPOINT_GRIDS
    from src.store import STORE_DTYPES
    from src.tasks import task_class

    if int(cfg.d) <= 0:
        raise UserError(f"projection dimension d must be positive, got d={cfg.d}")
    if int(cfg.P) < 1:
        raise UserError(f"P (number of synthetic checkpoints) must be >= 1, got P={cfg.P}")
    if int(cfg.k) <= 0:
        raise UserError(f"k (selection size) must be positive, got k={cfg.k}")
    _one_of("checkpoints", cfg.get("checkpoints", "theta_f"), CHECKPOINT_GRIDS)
    _one_of("gradient.store_dtype", cfg.gradient.store_dtype, STORE_DTYPES)
    sel = cfg.get("selection") or {}
    _one_of("selection.precision", sel.get("precision", "stored"), ("stored", "float32"))
    mode = cfg.retrain.get("select_epoch", "final")
    _one_of("retrain.select_epoch", mode, ("final", "val", "test"))
    if mode == "val" and cfg.get("dataset") is not None and not cfg.dataset.get("n_val"):  # recover: no dataset
        raise UserError("retrain.select_epoch=val needs a validation split: set dataset.n_val > 0")
    leak = float((cfg.get("seed") or {}).get("leak_fraction") or 0)
    if not 0 <= leak <= 1:
        raise UserError(f"seed.leak_fraction must be in [0, 1], got {leak}")
    for stage in ("finetune", "retrain"):
        _one_of(f"{stage}.train", cfg[stage].get("train", "all"), TRAINABLE)
    task_class(cfg).check(cfg)


def has_true_data(cfg) -> bool:
    return cfg.get("dataset") is not None


def preflight(cfg, selectors: dict) -> None:
    """Cheap checks of everything a user names (mode, devices, model paths, selectors vs data, the
    gradient options a selector asks for)."""
    from src.selectors.registry import with_gradient_options

    for sel in selectors.values():
        if sel.gradients:
            validate(with_gradient_options(cfg, sel.gradients))
    needs_classes = without_classes(cfg, selectors)
    if needs_classes:
        raise UserError(f"selector(s) {needs_classes} balance picks over autolabel classes, which task={cfg.task} "
                        "does not have; drop them from baselines or use select / topk")
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


def without_classes(cfg, selectors: dict) -> list[str]:
    """The selectors that need class autolabels, where the task has none (lm, sft)."""
    from src.tasks import task_class

    if task_class(cfg).data_kind == "labelled":
        return []
    return [name for name, s in selectors.items() if s.needs_classes]


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
