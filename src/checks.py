"""Checks of a run's input before anything expensive, in every mode, beyond what each option object
checks of its own values when it is made (``src.options``).

``validate`` asks the task what it cannot do with the run's gradient options and with each selector's
own (``gradients:``), and ``preflight`` checks what a user names (devices, model paths, selectors
against the data), so bad input fails in one line before any data or model is loaded, and nothing is
computed for minutes before a later stage rejects it.

``mode=recover`` (conf/mode/recover.yaml) runs the same ``src.pipeline.run`` as an experiment; the
true data (``dataset``) is then optional: without it the pipeline stops after selection.
"""
from __future__ import annotations

import logging

from src.errors import UserError
from src.finetuned import check_exists, check_finetuned
from src.options import RunOptions, TrainerOptions
from src.tasks import task_class

log = logging.getLogger(__name__)


def validate(opts: RunOptions, selectors: dict | None = None) -> None:
    """The task's own checks of the run's gradient options and of every selector's variant of them."""
    cls = task_class(opts.task.name)
    cls.check(opts, opts.gradient)
    for sel in (selectors or {}).values():
        if sel.gradients:
            cls.check(opts, opts.gradient.with_selector(sel.gradients))


def preflight(opts: RunOptions, selectors: dict) -> None:
    """Cheap checks of everything a user names (devices, model paths, selectors vs data, the gradient
    options a selector asks for)."""
    validate(opts, selectors)
    needs_classes = without_classes(opts, selectors)
    if needs_classes:
        raise UserError(f"selector(s) {needs_classes} balance picks over autolabel classes, which "
                        f"task={opts.task.name} does not have; drop them from baselines or use select / topk")
    check_device(opts.task.trainer)
    model = opts.task.model
    if opts.mode == "recover" and not model.finetuned:
        raise UserError("mode=recover needs θf: set model.finetuned to a model folder, hub id or PEFT adapter folder")
    if not opts.has_true_data:
        if opts.mode != "recover":
            raise UserError("an experiment needs the true data (dataset=...); use mode=recover to select without it")
        needs_true = [name for name, s in selectors.items() if s.needs_true_data]
        if needs_true:
            raise UserError(f"selector(s) {needs_true} pick from the true data, which mode=recover without a "
                            "dataset does not have; drop them from baselines or give dataset=...")
    check_exists(str(model.name_or_path), "model.name_or_path")
    check_finetuned(model.finetuned, model.head, head_readers(opts, selectors))


def head_readers(opts: RunOptions, selectors: dict) -> list[str]:
    """The selectors that select on the last layer's gradients alone (``gradient.layers=head``): only they
    need θf to have changed it (an adapter on attention moves the whole-model selectors' target, not theirs)."""
    return [name for name, s in selectors.items() if s.needs_gradients
            and str(opts.gradient.with_selector(s.gradients or {}).layers) == "head"]


def without_classes(opts: RunOptions, selectors: dict) -> list[str]:
    """The selectors that need class autolabels, where the task has none (lm, sft)."""
    if task_class(opts.task.name).data_kind == "labelled":
        return []
    return [name for name, s in selectors.items() if s.needs_classes]


def check_device(trainer: TrainerOptions) -> None:
    """``trainer=gpu`` on a machine without one: one line instead of Lightning's traceback."""
    import torch

    acc = str(trainer.accelerator)
    if acc in ("gpu", "cuda") and not torch.cuda.is_available():
        raise UserError(f"trainer.accelerator={acc} but torch sees no CUDA GPU on this machine; use trainer=cpu")
    if acc == "mps" and not torch.backends.mps.is_available():
        raise UserError("trainer.accelerator=mps but this machine has no Apple MPS device; use trainer=cpu")
    devices = trainer.devices
    if acc in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise UserError(f"trainer.devices={devices} but this machine has {torch.cuda.device_count()} CUDA GPU(s)")
