"""Supervised finetuning of causal LMs: θf's generated response is the autolabel, the last layer is
the LM head (see src/tasks/causal.py for the model, loss and gradient stage it shares), the metric is
the perplexity of held-out true responses. Only response tokens count in every loss."""
from __future__ import annotations

import math

import torch
from tqdm.auto import tqdm

from src.tasks.causal import CausalLMTask


class SFTTask(CausalLMTask):
    name = "sft"
    data_kind = "prompt_response"
    metric, higher_is_better = "perplexity", False
    seed_columns = ("prompt",)  # θf answers each seed row's prompt

    def fields(self) -> dict:
        return {"generation": self.opts.generation}

    # -- examples -----------------------------------------------------------------
    def true_examples(self, ds, idx=None) -> dict:
        idx = range(len(ds)) if idx is None else idx
        return {"prompt": [ds["prompt"][i] for i in idx], "response": [ds["response"][i] for i in idx]}

    def seed_examples(self, seed, autolabels: dict, idx) -> dict:
        return {"prompt": [seed["prompt"][i] for i in idx], "response": [autolabels["responses"][i] for i in idx]}

    def ot_texts(self, examples: dict) -> list[str]:
        return [p + r for p, r in zip(examples["prompt"], examples["response"])]

    def training_items(self, examples: dict, tokenizer) -> list:
        return list(zip(examples["prompt"], examples["response"]))

    # -- autolabel ------------------------------------------------------------------
    def _scores(self, model, tok, prompts, responses) -> torch.Tensor:
        """Mean token log-likelihood of each response given its prompt."""
        s = self._nll(model, tok, list(zip(prompts, responses)), self.opts.batch_size)
        return -s["nll"] / s["n"].clamp_min(1)

    @torch.no_grad()
    def generate(self, model, tok, prompts: list[str]) -> list[str]:
        """Batched decoding from θf (``generation.do_sample``: seeded sampling, or greedy), left-padded
        as decoder-only generation needs."""
        g = self.opts.generation
        model.eval()
        tok.padding_side = "left"
        out, gen = [], torch.Generator().manual_seed(self.opts.rng)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # sampling is seeded too
        try:
            for i in tqdm(range(0, len(prompts), g.batch_size), desc="autolabel: generating", leave=False):
                enc = tok(prompts[i:i + g.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                room = self.opts.model.max_length - enc["input_ids"].shape[1]
                new = model.generate(**enc, max_new_tokens=max(1, min(g.max_new_tokens, room)), do_sample=g.do_sample,
                                     temperature=g.temperature if g.do_sample else None,
                                     top_p=g.top_p if g.do_sample else None, pad_token_id=tok.pad_token_id)
                out += tok.batch_decode(new[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)
        finally:
            tok.padding_side = "right"
        return out

    def autolabel(self, pair, seed) -> dict:
        prompts = seed["prompt"]
        responses = self.generate(pair.load(1.0), pair.tokenizer, prompts)
        return {"responses": responses, "logp_f": self._scores(pair.load(1.0), pair.tokenizer, prompts, responses),
                "logp_0": self._scores(pair.load(0.0), pair.tokenizer, prompts, responses)}

    def describe_autolabels(self, autolabels: dict, data) -> str:
        lens = [len(r.split()) for r in autolabels["responses"]]
        return f"{len(lens)} responses, mean {sum(lens) / max(1, len(lens)):.1f} words; e.g. {autolabels['responses'][0]!r}"

    # -- gradients ------------------------------------------------------------------
    def gradient_items(self, seed, autolabels: dict, rows: range) -> list:
        """(prompt, generated response) for seed rows ``rows``."""
        return list(zip(seed[rows.start:rows.stop]["prompt"], autolabels["responses"][rows.start:rows.stop]))

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, model, tokenizer, test) -> dict:
        """Perplexity of the held-out true responses: exp(total response NLL / response tokens)."""
        s = self._nll(model, tokenizer, list(zip(test["prompt"], test["response"])), self.opts.eval_batch_size)
        return {"perplexity": math.exp(float(s["nll"].sum() / s["n"].sum()))}
