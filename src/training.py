"""Lightning glue: finetuning/retraining a classifier and batched forward passes.

The math lives elsewhere (``src.gradients``); this file only moves batches through
models on whatever accelerator the trainer options (``src.options.TrainerOptions``) name.
"""
from __future__ import annotations

import logging
from typing import Callable

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from src.collate import TextCollate
from src.options import TrainerOptions, TrainOptions

log = logging.getLogger(__name__)


def make_loader(tokenizer, texts, labels=None, *, batch_size: int, max_length: int,
                shuffle: bool = False, seed: int = 0) -> DataLoader:
    items = list(zip(texts, labels if labels is not None else [None] * len(texts)))
    return DataLoader(items, batch_size=batch_size, shuffle=shuffle, collate_fn=TextCollate(tokenizer, max_length),
                      generator=torch.Generator().manual_seed(seed))


def build_trainer(t: TrainerOptions, logger=False, **overrides) -> L.Trainer:
    kw = dict(accelerator=t.accelerator, devices=t.devices, precision=t.precision, strategy=t.strategy,
              num_nodes=t.num_nodes, enable_progress_bar=t.progress_bar, enable_model_summary=False,
              enable_checkpointing=False, logger=logger, log_every_n_steps=t.log_every_n_steps)
    kw.update(overrides)
    return L.Trainer(**kw)


def classification_loss(model, batch):
    labels = batch.pop("labels")
    return F.cross_entropy(model(**batch).logits.float(), labels), len(labels)


class TrainModule(L.LightningModule):
    """Finetuning with a task's ``loss_fn(model, batch) -> (loss, batch size)`` (θ0→θf and retraining)."""

    def __init__(self, model, lr: float, weight_decay: float, warmup_ratio: float, prefix: str = "train",
                 loss_fn: Callable = classification_loss):
        super().__init__()
        self.model, self.lr, self.wd, self.warmup, self.prefix, self.loss_fn = \
            model, lr, weight_decay, warmup_ratio, prefix, loss_fn

    def training_step(self, batch, _):
        loss, n = self.loss_fn(self.model, dict(batch))
        self.log(f"{self.prefix}/loss", loss, prog_bar=True, batch_size=n)
        return loss

    def configure_optimizers(self):
        opt = torch.optim.AdamW([p for p in self.model.parameters() if p.requires_grad], lr=self.lr, weight_decay=self.wd)
        total = max(1, self.trainer.estimated_stepping_batches)
        warm = max(1, int(self.warmup * total))

        def schedule(step):  # linear warm-up, then linear decay to 0
            return (step + 1) / warm if step < warm else max(0.0, (total - step) / max(1, total - warm))

        return {"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, schedule),
                                                   "interval": "step"}}


class EpochMonitor(L.Callback):
    """Scores the model after every epoch, keeps the best weights and stops early.

    ``score(model) -> float`` (higher is better) is the task metric on a held-out split;
    ``patience`` epochs without improvement end training (None: never). After ``fit`` the
    best epoch's weights are loaded back (``restore``), so what is evaluated is that epoch.
    """

    def __init__(self, score: Callable, patience: int | None = None, restore: bool = True, sign: float = 1.0):
        self.score, self.patience, self.restore, self.sign = score, patience, restore, sign
        self.history: list[float] = []
        self.best_epoch, self._best_state = -1, None

    def on_train_epoch_end(self, trainer, pl_module):
        model = pl_module.model
        model.eval()
        s = float(self.score(model))
        model.train()
        self.history.append(s)
        if self.best_epoch < 0 or s > self.history[self.best_epoch]:
            self.best_epoch = len(self.history) - 1
            if self.restore:
                self._best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
        elif self.patience and len(self.history) - 1 - self.best_epoch >= int(self.patience):
            trainer.should_stop = True

    def finish(self, model) -> None:
        if self.restore and self._best_state is not None:
            model.load_state_dict(self._best_state)
        self._best_state = None

    def summary(self) -> dict:
        return {"epochs_run": len(self.history), "best_epoch": self.best_epoch + 1,
                "epoch_scores": [round(self.sign * s, 6) for s in self.history]}  # in the metric's own units


def fit(model, loader, ft: TrainOptions, trainer: TrainerOptions, logger=False, prefix="train",
        loss_fn=classification_loss, monitor: EpochMonitor | None = None, head: str | None = None):
    """Train ``model`` in place for ``ft.epochs`` (or ``ft.max_steps``) over ``loader``; with a
    ``monitor``, end at (and keep) its best epoch. ``ft.train=head`` trains the last layer (``head``) alone,
    the body frozen: a θf whose delta is exactly a sum of last-layer gradients on fixed features."""
    # A fixed number of optimiser steps would make tiny selections train longer per example;
    # epochs keep "k examples seen E times" comparable across selectors.
    lightning = build_trainer(trainer, logger=logger, max_epochs=ft.epochs, max_steps=ft.max_steps or -1,
                              callbacks=[monitor] if monitor is not None else None)
    frozen = []
    if ft.train == "head":
        keep = {id(p) for p in model.get_submodule(head).parameters()}
        frozen = [p for p in model.parameters() if id(p) not in keep and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
    model.train()  # from_pretrained returns eval mode; Lightning keeps submodule modes as found
    try:
        lightning.fit(TrainModule(model, ft.lr, ft.weight_decay, ft.warmup_ratio, prefix, loss_fn), loader)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    model.eval()
    if monitor is not None:
        monitor.finish(model)
    return model


def fit_classifier(model, tokenizer, texts, labels, ft: TrainOptions, trainer: TrainerOptions, rng: int, logger=False,
                   prefix="train", monitor: EpochMonitor | None = None, head: str | None = None):
    """Train a sequence classifier in place on (texts, labels) with the ``finetune`` config ``ft``."""
    L.seed_everything(rng, workers=True, verbose=False)
    loader = make_loader(tokenizer, texts, labels, batch_size=ft.batch_size, max_length=ft.max_length,
                         shuffle=True, seed=rng)
    return fit(model, loader, ft, trainer, logger, prefix, monitor=monitor, head=head)


class ForwardModule(L.LightningModule):
    """Runs ``fn(model, batch) -> dict of [batch, ...] tensors`` under Lightning's predict loop."""

    def __init__(self, model, fn: Callable):
        super().__init__()
        self.model, self.fn = model, fn

    def predict_step(self, batch, _):
        with torch.no_grad():
            return {k: v.float().cpu() for k, v in self.fn(self.model, batch).items()}


def length_order(items: list, length: Callable) -> tuple[list[int], torch.Tensor]:
    """Indices sorting ``items`` by ``length`` (batches of similar length waste less compute on
    padding) and the inverse permutation that puts per-item outputs back in input order."""
    order = sorted(range(len(items)), key=lambda i: length(items[i]))
    inverse = torch.empty(len(order), dtype=torch.long)
    inverse[torch.as_tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return order, inverse


def run_predict(model, items: list, collate: Callable, fn: Callable, *, batch_size: int, trainer: TrainerOptions,
                length: Callable = lambda item: len(item[0]), reduce: str = "cat", grad: bool = False) -> dict:
    """Apply ``fn`` to every batch of ``items`` and concatenate its per-item outputs, in input order
    (``reduce="sum"``: ``fn`` returns per-batch totals, summed over the batches). ``grad``: run outside
    inference mode, for an ``fn`` that differentiates (it enables grad itself)."""
    if len(items) == 0:
        return {}
    model.eval()
    order, inverse = length_order(items, length)
    loader = DataLoader([items[i] for i in order], batch_size=batch_size, collate_fn=collate)
    # One device, predictions returned in order; a multi-device pass would write per-rank shards instead.
    outs = build_trainer(trainer, devices=1, strategy="auto", num_nodes=1,
                         inference_mode=not grad).predict(ForwardModule(model, fn), loader)
    if reduce == "sum":
        return {k: sum(o[k] for o in outs) for k in outs[0]}
    return {k: torch.cat([o[k] for o in outs])[inverse] for k in outs[0]}


def predict(model, tokenizer, texts, fn: Callable, *, batch_size: int, max_length: int, trainer: TrainerOptions,
            labels=None):
    """``run_predict`` over plain texts (and optional integer labels)."""
    items = list(zip(texts, [int(y) for y in labels] if labels is not None else [None] * len(texts)))
    return run_predict(model, items, TextCollate(tokenizer, max_length), fn, batch_size=batch_size, trainer=trainer)


def logits_fn(model, batch):
    batch = {k: v for k, v in batch.items() if k != "labels"}
    return {"logits": model(**batch).logits}


def accuracy(model, tokenizer, texts, labels, *, batch_size, max_length, trainer: TrainerOptions) -> float:
    out = predict(model, tokenizer, texts, logits_fn, batch_size=batch_size, max_length=max_length, trainer=trainer)
    pred = out["logits"].argmax(-1)
    return float((pred == torch.as_tensor(list(labels))).float().mean())
