"""Label-word classification by a causal LM (the paper's classification setup).

Each class has a label word (" World", " Sports", ...); an example is its text in a prompt template
("{text}\\nTopic:") followed by the label word's first token as a one-token *response*: the loss is
next-token cross-entropy of that token over the whole vocabulary. So this is SFT with a one-token
response (src/tasks/causal.py): the same collate, loss and LM-head gradient stage, whose gradient is
then the rank-1 (p − e_y) hᵀ at the answer position. Autolabel and accuracy take θf's / the model's
argmax over the label words there.

Tied heads (GPT-2, SmolLM2): the head delta θf − θ0 then also holds the input-embedding updates,
while per-example head gradients model only the head's use; the log says so, and
``model.untie_head=true`` gives θ0 its own head copy so the delta is the head's alone.
"""
from __future__ import annotations

import functools
import logging

import torch

from src.collate import LabelWordCollate
from src.errors import UserError
from src.gradients.last_layer import answer_logits
from src.tasks.causal import CausalLMTask

log = logging.getLogger(__name__)


def default_label_word(name: str) -> str:
    """" animal" for "noun.animal", " Tech" for "Sci/Tech": the last part, with a leading space."""
    return " " + str(name).replace("/", ".").split(".")[-1].strip()


@functools.lru_cache(maxsize=16)
def _first_tokens(tokenizer, words: tuple) -> tuple:
    ids = []
    for w in words:
        toks = tokenizer(w, add_special_tokens=False)["input_ids"]
        if not toks:
            raise UserError(f"label word {w!r} encodes to no token")
        if len(toks) > 1:  # the first token decides the class; it must still be unique
            log.warning("label word %r is %d tokens; classifying by its first token %r", w, len(toks),
                        tokenizer.decode(toks[:1]))
        ids.append(toks[0])
    if len(set(ids)) < len(ids):
        raise UserError(f"label words {list(words)} share a first token; give dataset.label_words that differ")
    return tuple(ids)


class ClassifyLMTask(CausalLMTask):
    name = "classify_lm"
    data_kind = "labelled"
    metric, higher_is_better = "accuracy", True
    eos = False                # the response is the label word's token alone
    keep_prompt_end = True     # a long text loses its start, never the cue the label word follows

    def __init__(self, opts, classes=()):
        super().__init__(opts, classes)
        # No dataset (recover mode) or none named: label words from the class names.
        self.words = list(opts.label_words or [default_label_word(c) for c in self.classes])
        if self.classes and len(self.words) != len(self.classes):
            raise UserError(f"dataset.label_words has {len(self.words)} words for {len(self.classes)} classes "
                            f"{self.classes}")
        self.template = opts.lm_prompt

    def fields(self) -> dict:
        return {"classes": self.classes, "label_words": self.words, "prompt": self.template}

    def label_tokens(self, tokenizer) -> torch.Tensor:
        """[C] the token id of each class's label word (its first token)."""
        return torch.as_tensor(_first_tokens(tokenizer, tuple(self.words)))

    def build_base(self, data):
        model, tok = super().build_base(data)
        log.info("classify_lm: label words %s", dict(zip(self.classes, self.words)))
        self.label_tokens(tok)  # unusable label words fail here, before θf is made
        return model, tok

    def collate(self, tokenizer) -> LabelWordCollate:
        return LabelWordCollate(super().collate(tokenizer), self.template, self.label_tokens(tokenizer).tolist())

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
        counts = torch.bincount(torch.as_tensor(examples["label"], dtype=torch.long), minlength=len(self.classes))
        return dict(zip(self.classes, (counts.float() / max(1, len(examples["label"]))).tolist()))

    def training_items(self, examples: dict, tokenizer) -> list:
        return list(zip(examples["text"], examples["label"]))

    # -- forward passes -------------------------------------------------------------
    def _label_logp(self, model, tokenizer, texts) -> torch.Tensor:
        """[n, C]: log p(label word of class c | prompt), normalised over the whole vocabulary."""
        tokens, head = self.label_tokens(tokenizer), self.opts.model.head

        def fn(m, batch):
            return {"lp": answer_logits(m, batch, head).log_softmax(-1)[:, tokens.to(batch["input_ids"].device)]}

        from src.training import run_predict

        return run_predict(model, [(t, None) for t in texts], self.collate(tokenizer), fn,
                           batch_size=self.opts.batch_size, trainer=self.opts.trainer)["lp"]

    def autolabel(self, pair, seed) -> dict:
        lf = self._label_logp(pair.load(1.0), pair.tokenizer, seed["text"])
        l0 = self._label_logp(pair.load(0.0), pair.tokenizer, seed["text"])
        y = lf.argmax(-1)
        # The texts' own token statistics too: full finetuning moves the body, so θf has learned the true
        # texts' words as well as their label words (and θ0's text NLL is the novelty detector).
        stats = self.text_stats(pair, [(None, t) for t in seed["text"]], self.opts.batch_size)
        # θf's and θ0's label-word distributions: KL(θf ‖ θ0) over the C label words (each renormalised).
        pf, p0 = lf.log_softmax(-1), l0.log_softmax(-1)
        kl = (pf.exp() * (pf - p0)).sum(-1)
        return {"labels": y, "logp_f": lf.gather(1, y[:, None])[:, 0], "logp_0": l0.gather(1, y[:, None])[:, 0],
                "stat_label_kl": kl, **stats}

    def describe_autolabels(self, autolabels: dict, data) -> str:
        counts = torch.bincount(autolabels["labels"], minlength=len(self.classes)).tolist()
        return f"class counts on the seed corpus {dict(zip(self.classes, counts))}"

    def evaluate(self, model, tokenizer, test) -> dict:
        pred = self._label_logp(model, tokenizer, test["text"]).argmax(-1)
        return {"accuracy": float((pred == torch.as_tensor(list(test["label"]))).float().mean())}

    # -- gradients ------------------------------------------------------------------
    def gradient_items(self, seed, autolabels: dict, rows: range) -> list:
        """(text, θf's autolabel) for seed rows ``rows``; the collate renders prompt and label token."""
        return list(zip(seed[rows.start:rows.stop]["text"], autolabels["labels"][rows.start:rows.stop].tolist()))
