"""Classification: θf's argmax class is the autolabel; the last layer is the classifier head;
the metric is test accuracy."""
from __future__ import annotations

import functools

import torch

from src.collate import TextCollate
from src.errors import UserError
from src.gradients.last_layer import pooled_positions, projected_target
from src.gradients.projectors import make_projector
from src.models import build_classifier, load_finetuned, load_tokenizer
from src.options import GradientOptions, RunOptions
from src.tasks.base import GradientSpec, Task


class ClassificationTask(Task):
    name = "classification"
    data_kind = "labelled"
    metric, higher_is_better = "accuracy", True

    def fields(self) -> dict:
        return {"classes": self.classes}

    @classmethod
    def check(cls, run: RunOptions, gradient: GradientOptions) -> None:
        name = str(run.task.model.name_or_path)
        if name == "base_lm" or name.startswith("gguf:"):  # made or converted here as causal LMs only
            raise UserError(f"task=classification puts a fresh classification head on a sequence classifier "
                            f"(model=minilm, bert-base, ...); model.name_or_path={name} is a causal LM: use "
                            "task=classify_lm, which classifies through its LM head")
        g = gradient
        if g.projection != "auto" or g.precondition != "none":
            raise UserError("task=classification projects its fresh head's gradients with the dense `projector`; "
                            "gradient.projection and gradient.precondition are options of the LM-head tasks "
                            f"(classify_lm, lm, sft), got projection={g.projection}, "
                            f"precondition={g.precondition}")

    # -- models -------------------------------------------------------------------
    def build_base(self, data):
        """θ0: the base model with a new head seeded by ``rng`` (θf is finetuned from exactly this). When θf
        is given instead, θ0 must carry the head θf started from (``require_head``)."""
        if not data.classes:
            raise UserError("classification needs its classes: give a dataset, set classes=[...], or a θf folder "
                            "whose config.json has id2label")
        model = build_classifier(self.opts.model, len(data.classes), head_seed=self.opts.rng,
                                 require_head=bool(self.opts.model.finetuned))
        return model, load_tokenizer(self.opts.model)

    def load_finetuned(self, path, data):
        return load_finetuned(path, len(data.classes))

    def train(self, model, tokenizer, examples: dict, ft, prefix: str, logger=False, monitor=None):
        from src.training import fit_classifier

        return fit_classifier(model, tokenizer, examples["text"], examples["label"], ft, self.opts.trainer,
                              rng=self.opts.rng, logger=logger, prefix=prefix, monitor=monitor,
                              head=self.opts.model.head)

    # -- examples -----------------------------------------------------------------
    def true_examples(self, ds, idx=None) -> dict:
        idx = range(len(ds)) if idx is None else idx
        return {"text": [ds["text"][i] for i in idx], "label": [int(ds["label"][i]) for i in idx]}

    def seed_examples(self, seed, autolabels: dict, idx) -> dict:
        return {"text": [seed["text"][i] for i in idx], "label": autolabels["labels"][torch.as_tensor(idx)].tolist()}

    def ot_texts(self, examples: dict) -> list[str]:
        return examples["text"]

    def composition(self, examples: dict, data) -> dict:
        """Share of each class among the training labels: shows a selector collapsing onto one class."""
        counts = torch.bincount(torch.as_tensor(examples["label"]), minlength=len(data.classes)).float()
        return dict(zip(data.classes, (counts / max(1, len(examples["label"]))).tolist()))

    # -- autolabel ------------------------------------------------------------------
    def autolabel(self, pair, seed) -> dict:
        from src.training import logits_fn, predict

        texts = seed["text"]
        kw = dict(batch_size=self.opts.batch_size, max_length=self.opts.model.max_length, trainer=self.opts.trainer)
        lf = predict(pair.load(1.0), pair.tokenizer, texts, logits_fn, **kw)["logits"].log_softmax(-1)
        l0 = predict(pair.load(0.0), pair.tokenizer, texts, logits_fn, **kw)["logits"].log_softmax(-1)
        y = lf.argmax(-1)
        return {"labels": y, "logp_f": lf.gather(1, y[:, None])[:, 0], "logp_0": l0.gather(1, y[:, None])[:, 0]}

    def describe_autolabels(self, autolabels: dict, data) -> str:
        counts = torch.bincount(autolabels["labels"], minlength=len(data.classes)).tolist()
        return f"class counts on the seed corpus {dict(zip(data.classes, counts))}"

    # -- gradients ------------------------------------------------------------------
    def gradient_items(self, seed, autolabels: dict, rows: range) -> list:
        """(text, autolabel) for seed rows ``rows``: the work of one gradient shard."""
        texts = seed[rows.start:rows.stop]["text"]
        return list(zip(texts, autolabels["labels"][rows.start:rows.stop].tolist()))

    def gradient_spec(self, pair, seed, autolabels: dict, alphas, gradient: GradientOptions) -> GradientSpec:
        """The head's gradient (p − e_y)[h; 1]ᵀ at the pooled input, by a dense JL map (``projector``)."""
        head = pair.head_name
        with_bias = pair.head.bias is not None
        in_dim = pair.head.weight.numel() + (pair.head.bias.numel() if with_bias else 0)  # a row: [W_c, b_c] per class
        projector = make_projector(gradient.projector, in_dim=in_dim, d=gradient.d)
        return GradientSpec(items=self.gradient_items, collate=TextCollate(pair.tokenizer, self.opts.model.max_length),
                            positions=functools.partial(pooled_positions, head=head), head=head, projector=projector,
                            target=projected_target(pair.state0, pair.statef, head, projector, with_bias),
                            with_bias=with_bias, key=self.fields())

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, model, tokenizer, test) -> dict:
        from src.training import accuracy

        acc = accuracy(model, tokenizer, test["text"], test["label"], batch_size=self.opts.eval_batch_size,
                       max_length=self.opts.model.max_length, trainer=self.opts.trainer)
        return {"accuracy": acc}
