"""The task interface, and the gradient stage a task states as one immutable ``GradientSpec``.

A task is what differs between classification, label-word classification, SFT and language
modelling. It reads its options (``src.options.TaskOptions``), never the config. It says what its
data holds (``data_kind``, see ``src.data.loading``), which option values its outputs depend on
(``fields``: every cached stage's key includes them), how to build θ0, train a model on examples,
autolabel the seed corpus, state its gradient stage (for the gradient options it is given) and evaluate.
Caching, the gradient store, selectors, OT distance and results are shared (``src.stages``,
``src.pipeline``) and never ask which task they run.

A new task is one file in ``src/tasks/`` (a subclass of ``Task``, registered in ``TASKS`` of
``src/tasks/__init__.py``) plus one ``conf/task/<name>.yaml``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import torch

from src.gradients.last_layer import projected_grads
from src.options import GradientOptions, RunOptions, TaskOptions, TrainerOptions


@dataclass(frozen=True)
class GradientSpec:
    """Everything the gradient pass needs, fixed before it starts.

    Every row is P(G_i) of ``src.gradients.last_layer`` for the batch ``collate`` makes of
    ``items(seed, autolabels, rows)``, at the ``positions`` of the loss, for the layer ``head``.
    ``key`` lists what else the rows depend on (the task's config fields, a fitted preconditioner):
    with the autolabels' key, the checkpoints and the projector it keys the store, so a change to
    any of them is a new store. All members pickle, so DDP workers can be handed the spec.
    """

    items: Callable        # (seed, autolabels, rows: range) -> the work items of those seed rows
    collate: Callable      # list of items -> batch (dict of tensors)
    positions: Callable    # (model, batch) -> Positions: the last layer's inputs and targets
    head: str              # module name of the last layer
    projector: object
    target: torch.Tensor   # [d] −P(θf − θ0) on the last layer
    with_bias: bool = False          # the layer's bias gradient is part of each row (classifier heads)
    factors: tuple | None = None     # Adafactor (r, c) preconditioner, or None for raw gradients
    key: dict = field(default_factory=dict)
    exact: bool = False              # no projection: exact inner products (src/gradients/exact.py); projector None

    def __call__(self, model, batch) -> dict:
        """``{"g": [n, d]}`` for one batch (what the gradient pass stores)."""
        module = model.get_submodule(self.head)
        pos = self.positions(model, batch)
        return {"g": projected_grads(pos, module.weight, module.bias if self.with_bias else None, self.projector,
                                     with_bias=self.with_bias, factors=self.factors)}

    def describe(self) -> dict:
        """What keys the store: the projector, the head, the preconditioner (by content) and ``key``."""
        from src.cache import tensor_digest

        projector = {"kind": "exact"} if self.exact else self.projector.describe()
        return {"projector": projector, "head": self.head, "with_bias": self.with_bias,
                "factors": None if self.factors is None else [tensor_digest(f) for f in self.factors], **self.key}


class Task:
    """The interface (see the module docstring); subclasses fill it in."""

    name = "base"
    data_kind = "labelled"        # labelled | prompt_response | documents
    metric, higher_is_better = "accuracy", True
    seed_columns: tuple = ()      # seed-corpus columns the task reads besides text (SFT: prompt)

    def __init__(self, opts: TaskOptions, classes=()):
        self.opts, self.classes = opts, list(classes or [])

    def with_trainer(self, trainer: TrainerOptions) -> Task:
        """The same task running its fits and forward passes under ``trainer``."""
        return type(self)(replace(self.opts, trainer=trainer), self.classes)

    def fields(self) -> dict:
        """Option values that the task's models, autolabels and gradients depend on beyond ``model`` and
        ``dataset``: part of every cached stage's key."""
        return {}

    @classmethod
    def check(cls, run: RunOptions, gradient: GradientOptions) -> None:
        """Cheap checks of what the task cannot do with these options, before any data or model is loaded."""

    # models
    def build_base(self, data):
        raise NotImplementedError

    def load_finetuned(self, path, data):
        raise NotImplementedError

    def train(self, model, tokenizer, examples: dict, ft, prefix: str, logger=False, monitor=None):
        raise NotImplementedError

    # examples
    def true_examples(self, ds, idx=None) -> dict:
        raise NotImplementedError

    def seed_examples(self, seed, autolabels: dict, idx) -> dict:
        raise NotImplementedError

    def ot_texts(self, examples: dict) -> list[str]:
        raise NotImplementedError

    def composition(self, examples: dict, data) -> dict:
        return {}

    # stages
    def autolabel(self, pair, seed) -> dict:
        raise NotImplementedError

    def describe_autolabels(self, autolabels: dict, data) -> str:
        return ""

    def gradient_spec(self, pair, seed, autolabels: dict, alphas: list[float],
                      gradient: GradientOptions) -> GradientSpec:
        raise NotImplementedError

    def evaluate(self, model, tokenizer, test) -> dict:
        raise NotImplementedError
