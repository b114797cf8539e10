"""Language modelling on raw documents: θf is θ0 finetuned with the loss on every token of each
document, so there is nothing to autolabel (a seed document's own tokens are its targets) and the
metric is the perplexity of held-out true documents.

It is SFT with an empty prompt: a document is tokenised as [BOS] + document + EOS, the BOS (the
tokenizer's, e.g. GPT-2's ``<|endoftext|>``, which also separates documents in pretraining) being
the only "prompt" token, so every document token and the EOS are predicted and counted. A
tokenizer without a BOS gives prompt length 0: every token but the first is predicted. Model, loss,
gradient stage and collate are the causal-LM tasks' (``src/tasks/causal.py``).

The autolabel stage only scores: per-document mean token log-likelihood under θf and θ0, what the
``likelihood`` and ``likelihood_ratio`` baselines rank by.
"""
from __future__ import annotations

import math

from src.tasks.causal import CausalLMTask


class LMTask(CausalLMTask):
    name = "lm"
    data_kind = "documents"
    metric, higher_is_better = "perplexity", False

    @staticmethod
    def _items(docs) -> list:
        return [(None, d) for d in docs]  # no prompt: the BOS alone (see PromptResponseCollate)

    # -- examples -----------------------------------------------------------------
    def true_examples(self, ds, idx=None) -> dict:
        idx = range(len(ds)) if idx is None else idx
        return {"text": [ds["text"][i] for i in idx]}

    def seed_examples(self, seed, autolabels: dict, idx) -> dict:
        return {"text": [seed["text"][i] for i in idx]}  # the document is its own target

    def ot_texts(self, examples: dict) -> list[str]:
        return examples["text"]

    def training_items(self, examples: dict, tokenizer) -> list:
        return self._items(examples["text"])

    # -- "autolabel": scores only -----------------------------------------------------
    def autolabel(self, pair, seed) -> dict:
        """Mean token log-likelihood of every seed document under θf and θ0 (no labels to make), with the
        documents' two-model token statistics (``text_stats``) from the same two passes."""
        out = self.text_stats(pair, self._items(seed["text"]), self.opts.batch_size)
        return {"logp_f": -out["stat_nll_f"], "logp_0": -out["stat_nll_0"], **out}

    def describe_autolabels(self, autolabels: dict, data) -> str:
        f, z = autolabels["logp_f"], autolabels["logp_0"]
        return (f"{len(f)} seed documents scored (no labels: a document is its own target); mean token "
                f"log-likelihood θf {f.mean():.3f}, θ0 {z.mean():.3f}")

    # -- gradients ------------------------------------------------------------------
    def gradient_items(self, seed, autolabels: dict, rows: range) -> list:
        """The documents of seed rows ``rows``, each after the BOS."""
        return self._items(seed[rows.start:rows.stop]["text"])

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, model, tokenizer, test) -> dict:
        """Perplexity of the held-out true documents: exp(total NLL / predicted tokens), EOS included."""
        s = self._nll(model, tokenizer, self._items(list(test["text"])), self.opts.eval_batch_size)
        return {"perplexity": math.exp(float(s["nll"].sum() / s["n"].sum()))}
