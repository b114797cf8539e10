"""Supervised finetuning of causal LMs: θf's generated response is the autolabel, the last layer is
the LM head (gradients projected by a factored JL map, never materialised), the metric is the
perplexity of held-out true responses. Only response tokens count in every loss."""
from __future__ import annotations

import logging
import math

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from src.gradients.lm_head import projected_lm_head_grads_fn, projected_lm_head_target, response_mask
from src.gradients.projectors import FactoredProjector
from src.models import _from_hub
from src.training import fit, run_predict

log = logging.getLogger(__name__)


def sft_collate(tokenizer, max_length: int):
    """Items are (prompt, response) pairs → prompt + response + EOS, right-padded, with prompt lengths."""
    eos = tokenizer.eos_token_id

    def collate(items):
        rows, plens = [], []
        for prompt, response in items:
            p = tokenizer(prompt, add_special_tokens=False)["input_ids"][: max_length - 1]
            r = tokenizer(response, add_special_tokens=False)["input_ids"] + [eos]
            rows.append((p + r)[:max_length])
            plens.append(len(p))
        T = max(len(r) for r in rows)
        ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
        att = torch.zeros((len(rows), T), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, :len(r)], att[i, :len(r)] = torch.as_tensor(r), 1
        return {"input_ids": ids, "attention_mask": att, "prompt_lengths": torch.as_tensor(plens)}

    return collate


def response_nll(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed NLL of the response tokens and their count (prompt and padding masked)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    mask = response_mask(batch["input_ids"], batch["prompt_lengths"], batch["attention_mask"]).float()
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    return (nll * mask[:, :-1]).sum(1), mask.sum(1)


def sft_loss(model, batch):
    nll, n = response_nll(model, batch)
    return nll.sum() / n.sum().clamp_min(1), len(n)


class SFTTask:
    name = "sft"
    data_kind = "prompt_response"
    metric, higher_is_better = "perplexity", False
    seed_columns = ("prompt",)  # θf answers each seed row's prompt

    def __init__(self, cfg):
        self.cfg = cfg

    # -- models -------------------------------------------------------------------
    def _path(self) -> str:
        if self.cfg.model.name_or_path == "base_lm":  # the project's own small LM, pretrained once and cached
            from omegaconf import OmegaConf

            from src.lm.base_lm import ensure_base_lm

            return ensure_base_lm(OmegaConf.to_container(self.cfg.base_lm, resolve=True), self.cfg.cache_dir)
        return self.cfg.model.name_or_path

    def build_base(self, data):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = self._path()
        tok = _from_hub(AutoTokenizer.from_pretrained, self.cfg.model.get("tokenizer") or path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        torch.manual_seed(self.cfg.rng)
        if path.startswith("random:"):  # tests: a tiny random model sized to the tokenizer
            config = AutoConfig.for_model(path[7:], vocab_size=len(tok), **dict(self.cfg.model.get("config") or {}))
            model = AutoModelForCausalLM.from_config(config)
        else:
            model = _from_hub(AutoModelForCausalLM.from_pretrained, path)
        return model.eval(), tok

    def load_finetuned(self, path, data):
        from transformers import AutoModelForCausalLM

        return _from_hub(AutoModelForCausalLM.from_pretrained, path)

    def _loader(self, tok, examples, batch_size, shuffle=False):
        items = list(zip(examples["prompt"], examples["response"]))
        return DataLoader(items, batch_size=batch_size, shuffle=shuffle, collate_fn=sft_collate(tok, self.cfg.model.max_length),
                          generator=torch.Generator().manual_seed(self.cfg.rng))

    def train(self, model, tokenizer, examples: dict, ft, prefix: str, logger=False, monitor=None):
        L.seed_everything(self.cfg.rng, workers=True, verbose=False)
        return fit(model, self._loader(tokenizer, examples, ft.batch_size, shuffle=True), ft, self.cfg.trainer,
                   self.cfg.rng, logger, prefix, loss_fn=sft_loss, monitor=monitor)

    # -- examples -----------------------------------------------------------------
    @staticmethod
    def true_examples(ds, idx=None) -> dict:
        idx = range(len(ds)) if idx is None else idx
        return {"prompt": [ds["prompt"][i] for i in idx], "response": [ds["response"][i] for i in idx]}

    @staticmethod
    def seed_examples(seed, autolabels: dict, idx) -> dict:
        return {"prompt": [seed["prompt"][i] for i in idx], "response": [autolabels["responses"][i] for i in idx]}

    @staticmethod
    def ot_texts(examples: dict) -> list[str]:
        return [p + r for p, r in zip(examples["prompt"], examples["response"])]

    def composition(self, examples: dict, data) -> dict:
        return {}  # no classes; the per-row ``groups`` (e.g. lexicographer files) show what was picked

    # -- autolabel ------------------------------------------------------------------
    def _scores(self, model, tok, prompts, responses) -> torch.Tensor:
        """Mean token log-likelihood of each response given its prompt."""
        def fn(m, batch):
            nll, n = response_nll(m, batch)
            return {"logp": -nll / n.clamp_min(1)}

        return run_predict(model, list(zip(prompts, responses)), sft_collate(tok, self.cfg.model.max_length), fn,
                           batch_size=self.cfg.gradient.batch_size, trainer_cfg=self.cfg.trainer,
                           length=lambda it: len(it[0]) + len(it[1]))["logp"]

    @torch.no_grad()
    def generate(self, model, tok, prompts: list[str]) -> list[str]:
        """Batched decoding from θf (greedy by default), left-padded as decoder-only generation needs."""
        g = self.cfg.generation
        model.eval()
        tok.padding_side = "left"
        out, gen = [], torch.Generator().manual_seed(self.cfg.rng)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))  # sampling is seeded too
        try:
            for i in tqdm(range(0, len(prompts), g.batch_size), desc="autolabel: generating", leave=False):
                enc = tok(prompts[i:i + g.batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
                room = self.cfg.model.max_length - enc["input_ids"].shape[1]
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
    def make_projector(self, pair):
        W = pair.state0[f"{self.cfg.model.head}.weight"]
        return FactoredProjector(W.shape[0], W.shape[1], d=self.cfg.d, seed=self.cfg.projector.seed)

    def gradient_fn(self, pair, projector):
        return projected_lm_head_grads_fn(projector, self.cfg.model.head)

    @staticmethod
    def gradient_items(seed, autolabels: dict, rows: range) -> list:
        """(prompt, generated response) for seed rows ``rows``: the work of one gradient shard."""
        return list(zip(seed[rows.start:rows.stop]["prompt"], autolabels["responses"][rows.start:rows.stop]))

    def gradient_collate(self, tokenizer):
        return sft_collate(tokenizer, self.cfg.model.max_length)

    def projected_target(self, pair, projector):
        return projected_lm_head_target(pair.state0, pair.statef, projector, self.cfg.model.head)

    # -- evaluation -----------------------------------------------------------------
    def evaluate(self, model, tokenizer, test) -> dict:
        """Perplexity of the held-out true responses: exp(total response NLL / response tokens)."""
        def fn(m, batch):
            nll, n = response_nll(m, batch)
            return {"nll": nll, "n": n}

        out = run_predict(model, list(zip(test["prompt"], test["response"])),
                          sft_collate(tokenizer, self.cfg.model.max_length), fn,
                          batch_size=self.cfg.retrain.eval_batch_size, trainer_cfg=self.cfg.trainer,
                          length=lambda it: len(it[0]) + len(it[1]))
        return {"perplexity": math.exp(float(out["nll"].sum() / out["n"].sum()))}
