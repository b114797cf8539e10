"""Tasks: what differs between classification, label-word classification, SFT and language
modelling, behind the one interface of ``src.tasks.base.Task``.

``TASKS`` is the registry: ``task_class(name)`` is a task's class (what its data holds, its own
option checks) before any data is loaded; ``get_task(opts, classes)`` the task itself (its
``src.options.TaskOptions``), once the classes are known.
"""
from __future__ import annotations

import importlib

from src.errors import UserError, did_you_mean

TASKS = {"classification": "src.tasks.classification:ClassificationTask",
         "classify_lm": "src.tasks.classify_lm:ClassifyLMTask", "sft": "src.tasks.sft:SFTTask",
         "lm": "src.tasks.lm:LMTask"}


def task_class(name: str):
    if name not in TASKS:
        raise UserError(f"Unknown task '{name}'.{did_you_mean(name, TASKS)}")
    module, cls = TASKS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def get_task(opts, classes=()):
    return task_class(opts.name)(opts, classes)
