"""Collates: a list of work items → a batch of tensors. Classes, not closures, so a gradient spec that
holds one pickles (DDP workers), and free of Lightning, so the tasks import them cheaply. Below both
the tasks and the training loop (``src.training``), which each use them.

- ``TextCollate``: (text, label or None) for sequence classifiers (the tokenizer pads and truncates).
- ``PromptResponseCollate``: the one right-padding collate of every causal-LM task.
- ``LabelWordCollate``: label-word classification's items on top of it (a one-token response).
"""
from __future__ import annotations

import torch


class TextCollate:
    """Items are (text, label-or-None) pairs; labels, when present, go in ``batch["labels"]``.
    A class, not a closure, so what holds it pickles (DDP workers)."""

    def __init__(self, tokenizer, max_length: int):
        self.tokenizer, self.max_length = tokenizer, int(max_length)

    def __call__(self, items) -> dict:
        enc = self.tokenizer([t for t, _ in items], padding=True, truncation=True, max_length=self.max_length,
                             return_tensors="pt")
        if items and items[0][1] is not None:
            enc["labels"] = torch.as_tensor([int(y) for _, y in items])
        return dict(enc)


class PromptResponseCollate:
    """Items ``(prompt, response)`` → prompt + response ids, right-padded, with ``prompt_lengths``.

    ``prompt`` is text, or None for the tokenizer's BOS alone (nothing when it has none).
    ``response`` is text (tokenised, then EOS appended when ``eos``), a list of token ids (used as
    they are), or None (prompt only: what autolabelling and scoring of a next token need). Too long
    a row loses the end of its response (``keep_prompt_end=False``: SFT keeps the prompt's start) or
    the start of its prompt (``keep_prompt_end=True``: a label word must follow the prompt's cue).
    A class, not a closure, so a gradient spec holding it pickles (DDP workers).
    """

    def __init__(self, tokenizer, max_length: int, eos: bool = True, keep_prompt_end: bool = False):
        self.tok, self.max_length, self.eos, self.keep_end = tokenizer, int(max_length), eos, keep_prompt_end

    def _prompt(self, prompt) -> list[int]:
        if prompt is None:
            return [] if self.tok.bos_token_id is None else [self.tok.bos_token_id]
        return self.tok(prompt, add_special_tokens=False)["input_ids"]

    def _response(self, response) -> list[int]:
        if response is None:
            return []
        if isinstance(response, str):
            ids = self.tok(response, add_special_tokens=False)["input_ids"]
            return ids + [self.tok.eos_token_id] if self.eos else ids
        return [int(x) for x in response]

    def __call__(self, items) -> dict:
        rows, plens = [], []
        for prompt, response in items:
            p, r = self._prompt(prompt), self._response(response)
            if self.keep_end:
                p = p[-max(1, self.max_length - len(r)):]
            else:
                p = p[: self.max_length - 1]
            rows.append((p + r)[: self.max_length])
            plens.append(len(p))
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), self.tok.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], att[i, :len(r)] = torch.as_tensor(r, dtype=torch.long), 1
        return {"input_ids": ids, "attention_mask": att, "prompt_lengths": torch.as_tensor(plens)}


class LabelWordCollate:
    """Items ``(text, class index or None)`` → the prompt, then the class's label-word token as the response."""

    def __init__(self, inner: PromptResponseCollate, template: str, tokens: list[int]):
        self.inner, self.template, self.tokens = inner, template, tokens

    def __call__(self, items) -> dict:
        return self.inner([(self.template.format(text=t), None if y is None else [self.tokens[int(y)]])
                           for t, y in items])
