"""Tasks: what differs between classification, SFT and language modelling, behind one small interface.

A task says what its data holds (``data_kind``: ``labelled``, ``prompt_response`` or
``documents``, see ``src.data.loading``; ``labelled`` if unset), how to build θ0, train a model
on examples, autolabel the seed corpus, compute projected last-layer gradients and evaluate.
Everything else (caching, the gradient store, selectors, OT distance, results) is shared by
``src.stages`` and ``src.pipeline``. ``get_task(cfg)`` is the registry.
"""
from __future__ import annotations

from src.errors import UserError, did_you_mean

TASKS = {"classification": "src.tasks.classification:ClassificationTask",
         "classify_lm": "src.tasks.classify_lm:ClassifyLMTask", "sft": "src.tasks.sft:SFTTask",
         "lm": "src.tasks.lm:LMTask"}


def get_task(cfg):
    name = cfg.task
    if name not in TASKS:
        raise UserError(f"Unknown task '{name}'.{did_you_mean(name, TASKS)}")
    module, cls = TASKS[name].split(":")
    import importlib

    return getattr(importlib.import_module(module), cls)(cfg)
