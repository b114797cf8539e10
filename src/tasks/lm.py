"""Language modelling on raw documents: θf is θ0 finetuned with the loss on every token of each
document, so there is nothing to autolabel (a seed document's own tokens are its targets) and the
metric is the perplexity of held-out true documents.

It is SFT with an empty prompt: a document is tokenised as [BOS] + document + EOS, the BOS (the
tokenizer's, e.g. GPT-2's ``<|endoftext|>``, which also separates documents in pretraining) being
the only "prompt" token, so every document token and the EOS are predicted and counted. A
tokenizer without a BOS gives prompt length 0: every token but the first is predicted. Models,
the LM-head gradient (loss weights m_t / n_tokens, the factored projection that never builds the
V×H matrix) and the target are SFT's (``SFTTask``); only data, training items, the "autolabel"
stage and evaluation differ.

The autolabel stage only scores: per-document mean token log-likelihood under θf and θ0, what the
``likelihood`` and ``likelihood_ratio`` baselines rank by.
"""
from __future__ import annotations

import math

import torch
from torch.utils.data import DataLoader

from src.tasks.sft import SFTTask, response_nll, sft_collate
from src.training import run_predict


def document_collate(tokenizer, max_length: int):
    """Items are 1-tuples ``(document,)`` → [BOS] + document + EOS, right-padded; ``prompt_lengths``
    is 1 (the BOS) or 0 (no BOS), so the loss masks of ``src.gradients.lm_head`` count every token."""
    prefix = tokenizer.bos_token or ""  # special-token text, encoded as its one id
    pairs = sft_collate(tokenizer, max_length)

    def collate(items):
        return pairs([(prefix, doc) for (doc,) in items])

    return collate


def _length(item) -> int:
    return len(item[0])


class LMTask(SFTTask):
    name = "lm"
    data_kind = "documents"
    metric, higher_is_better = "perplexity", False
    seed_columns = ()  # a seed row is a document: its text is all the task reads

    # -- training -------------------------------------------------------------------
    def _loader(self, tok, examples, batch_size, shuffle=False):
        # SFTTask.train trains on whatever this returns, with the token-mean loss of ``sft_loss``.
        return DataLoader([(t,) for t in examples["text"]], batch_size=batch_size, shuffle=shuffle,
                          collate_fn=document_collate(tok, self.cfg.model.max_length),
                          generator=torch.Generator().manual_seed(self.cfg.rng))

    def _token_nll(self, model, tok, docs: list[str], batch_size: int) -> dict:
        """Per-document summed NLL (``nll``) and predicted-token count (``n``)."""
        def fn(m, batch):
            nll, n = response_nll(m, batch)
            return {"nll": nll, "n": n}

        return run_predict(model, [(d,) for d in docs], document_collate(tok, self.cfg.model.max_length), fn,
                           batch_size=batch_size, trainer_cfg=self.cfg.trainer, length=_length)

    # -- examples -----------------------------------------------------------------
    @staticmethod
    def true_examples(ds, idx=None) -> dict:
        idx = range(len(ds)) if idx is None else idx
        return {"text": [ds["text"][i] for i in idx]}

    @staticmethod
    def seed_examples(seed, autolabels: dict, idx) -> dict:
        return {"text": [seed["text"][i] for i in idx]}  # the document is its own target

    @staticmethod
    def ot_texts(examples: dict) -> list[str]:
        return examples["text"]

    # -- "autolabel": scores only -----------------------------------------------------
    def autolabel(self, pair, seed) -> dict:
        """Mean token log-likelihood of every seed document under θf and θ0 (no labels to make)."""
        docs, bs = seed["text"], self.cfg.gradient.batch_size
        out = {}
        for key, alpha in (("logp_f", 1.0), ("logp_0", 0.0)):
            s = self._token_nll(pair.load(alpha), pair.tokenizer, docs, bs)
            out[key] = -s["nll"] / s["n"].clamp_min(1)
        return out

    def describe_autolabels(self, autolabels: dict, data) -> str:
        f, z = autolabels["logp_f"], autolabels["logp_0"]
        return (f"{len(f)} seed documents scored (no labels: a document is its own target); mean token "
                f"log-likelihood θf {f.mean():.3f}, θ0 {z.mean():.3f}")

    # -- gradients ------------------------------------------------------------------
    @staticmethod
    def gradient_items(seed, autolabels: dict, rows: range) -> list:
        """The documents of seed rows ``rows``, as 1-tuples: the work of one gradient shard."""
        return [(t,) for t in seed[rows.start:rows.stop]["text"]]

    def gradient_collate(self, tokenizer):
        return document_collate(tokenizer, self.cfg.model.max_length)

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, model, tokenizer, test) -> dict:
        """Perplexity of the held-out true documents: exp(total NLL / predicted tokens), EOS included."""
        s = self._token_nll(model, tokenizer, list(test["text"]), self.cfg.retrain.eval_batch_size)
        return {"perplexity": math.exp(float(s["nll"].sum() / s["n"].sum()))}
