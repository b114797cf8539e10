"""Label-word classification by a causal LM (the paper's classification setup).

Each class has a label word (" World", " Sports", ...); an example is rendered with a prompt
template ("{text}\\nTopic:") and the loss is next-token cross-entropy of its label word over the
whole vocabulary. Autolabel and accuracy take θf's / the model's argmax over the label words.
The last layer is the LM head (V×H: tens of millions of numbers for GPT-2), so d = 4096 is a
real compression; gradients are projected with the factored map of ``src.gradients.projectors``
(or a dense JL map, ``classify_lm.projection=dense``) and optionally Adafactor-preconditioned
(see ``src.gradients.label_word``).

Tied heads (GPT-2: ``lm_head.weight is transformer.wte.weight``): the head delta θf − θ0 then
also holds the input-embedding updates, while per-example head gradients model only the
head's use; the log says so. Untied models (Llama, the embedded base LM) have no such term.
"""
from __future__ import annotations

import logging

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from src.errors import UserError
from src.gradients import label_word as lw
from src.gradients.lm_head import projected_lm_head_target
from src.gradients.projectors import FactoredProjector
from src.tasks.classification import ClassificationTask
from src.tasks.sft import SFTTask
from src.training import fit, run_predict

log = logging.getLogger(__name__)


def default_label_word(name: str) -> str:
    """" animal" for "noun.animal", " Tech" for "Sci/Tech": the last part, with a leading space."""
    return " " + str(name).replace("/", ".").split(".")[-1].strip()


class ClassifyLMTask(ClassificationTask):
    name = "classify_lm"
    metric, higher_is_better = "accuracy", True

    def __init__(self, cfg):
        super().__init__(cfg)
        self.opts = cfg.classify_lm
        self.label_tokens: torch.Tensor | None = None  # [C] token id of each class's label word
        self.factors = None                            # Adafactor (r, c), set by prepare_gradients

    # -- models -------------------------------------------------------------------
    def build_base(self, data):
        model, tok = SFTTask(self.cfg).build_base(data)
        tok.padding_side = "right"
        self.label_tokens = self._label_tokens(tok, data.classes)
        if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
            log.info("classify_lm: the LM head is tied to the input embeddings, so θf − θ0 on it also holds the "
                     "embedding updates, which per-example head gradients do not model")
        return model, tok

    def load_finetuned(self, path, data):
        return SFTTask(self.cfg).load_finetuned(path, data)

    def _label_tokens(self, tok, classes) -> torch.Tensor:
        dataset = self.cfg.get("dataset") or {}  # none in recover mode: label words from class names
        words = list(dataset.get("label_words") or [default_label_word(c) for c in classes])
        if len(words) != len(classes):
            raise UserError(f"dataset.label_words has {len(words)} words for {len(classes)} classes {classes}")
        ids = []
        for w in words:
            toks = tok(w, add_special_tokens=False)["input_ids"]
            if not toks:
                raise UserError(f"label word {w!r} encodes to no token")
            if len(toks) > 1:  # the first token decides the class; it must still be unique
                log.warning("label word %r is %d tokens; classifying by its first token %r", w, len(toks),
                            tok.decode(toks[:1]))
            ids.append(toks[0])
        if len(set(ids)) < len(ids):
            raise UserError(f"label words {words} share a first token; give dataset.label_words that differ")
        log.info("classify_lm: label words %s", dict(zip(classes, words)))
        return torch.as_tensor(ids)

    def _template(self) -> str:
        return (self.cfg.get("dataset") or {}).get("lm_prompt") or self.opts.prompt

    def collate(self, tokenizer):
        """(text, class or None) items → right-padded prompt ids; long prompts lose their start,
        never the cue at the end ("\\nTopic:") the label word follows."""
        template, max_len = self._template(), int(self.cfg.model.max_length)

        def fn(items):
            rows = [tokenizer(template.format(text=t), add_special_tokens=False)["input_ids"][-max_len:]
                    for t, _ in items]
            T = max(len(r) for r in rows)
            ids = torch.full((len(rows), T), tokenizer.pad_token_id, dtype=torch.long)
            att = torch.zeros((len(rows), T), dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, :len(r)], att[i, :len(r)] = torch.as_tensor(r), 1
            batch = {"input_ids": ids, "attention_mask": att}
            if items and items[0][1] is not None:
                batch["labels"] = torch.as_tensor([int(y) for _, y in items])
            return batch

        return fn

    def _head(self, model):
        return model.get_submodule(self.cfg.model.head)

    def train(self, model, tokenizer, examples: dict, ft, prefix: str, logger=False, monitor=None):
        L.seed_everything(self.cfg.rng, workers=True, verbose=False)
        tokens = self.label_tokens

        def loss_fn(m, batch):
            logits = lw.answer_logits(m, batch, self._head(m))
            return F.cross_entropy(logits, tokens.to(logits.device)[batch["labels"]]), len(batch["labels"])

        loader = DataLoader(list(zip(examples["text"], examples["label"])), batch_size=ft.batch_size, shuffle=True,
                            collate_fn=self.collate(tokenizer), generator=torch.Generator().manual_seed(self.cfg.rng))
        return fit(model, loader, ft, self.cfg.trainer, self.cfg.rng, logger, prefix, loss_fn=loss_fn, monitor=monitor)

    # -- forward passes -------------------------------------------------------------
    def _label_logp(self, model, tokenizer, texts) -> torch.Tensor:
        """[n, C]: log p(label word of class c | prompt), normalised over the whole vocabulary."""
        tokens = self.label_tokens

        def fn(m, batch):
            return {"lp": lw.answer_logits(m, batch, self._head(m)).log_softmax(-1)[:, tokens.to(batch["input_ids"].device)]}

        items = [(t, None) for t in texts]
        return run_predict(model, items, self.collate(tokenizer), fn, batch_size=self.cfg.gradient.batch_size,
                           trainer_cfg=self.cfg.trainer)["lp"]

    def autolabel(self, pair, seed) -> dict:
        lf = self._label_logp(pair.load(1.0), pair.tokenizer, seed["text"])
        l0 = self._label_logp(pair.load(0.0), pair.tokenizer, seed["text"])
        y = lf.argmax(-1)
        return {"labels": y, "logp_f": lf.gather(1, y[:, None])[:, 0], "logp_0": l0.gather(1, y[:, None])[:, 0]}

    def evaluate(self, model, tokenizer, test) -> dict:
        pred = self._label_logp(model, tokenizer, test["text"]).argmax(-1)
        return {"accuracy": float((pred == torch.as_tensor(list(test["label"]))).float().mean())}

    # -- gradients ------------------------------------------------------------------
    def make_projector(self, pair):
        W = pair.state0[f"{self.cfg.model.head}.weight"]
        if self.opts.projection == "factored":
            return FactoredProjector(W.shape[0], W.shape[1], d=self.cfg.d, seed=self.cfg.projector.seed)
        if self.opts.projection == "dense":
            from hydra.utils import instantiate

            return instantiate(self.cfg.projector)(in_dim=W.numel(), d=self.cfg.d)
        raise UserError(f"classify_lm.projection must be 'factored' or 'dense', got {self.opts.projection!r}")

    def prepare_gradients(self, pair, seed, autolabels: dict, alphas) -> dict:
        """Adafactor factors from a seed subsample, averaged over the checkpoints (one preconditioner,
        as Adam's running second moment is one estimate over the whole trajectory)."""
        mode = self.opts.precondition
        if mode not in ("none", "adafactor"):
            raise UserError(f"classify_lm.precondition must be 'none' or 'adafactor', got {mode!r}")
        if mode == "none":
            self.factors = None
            return {"precondition": "none"}
        n = min(len(seed), int(self.opts.precondition_rows))
        rows = torch.randperm(len(seed), generator=torch.Generator().manual_seed(self.cfg.rng))[:n].sort().values
        items = [(seed["text"][i], int(autolabels["labels"][i])) for i in rows.tolist()]
        fn = self._error_fn(None, raw=True)
        rs, cs = [], []
        for a in alphas:
            out = run_predict(pair.load(a), items, self.collate(pair.tokenizer), fn,
                              batch_size=self.cfg.gradient.batch_size, trainer_cfg=self.cfg.trainer)
            r, c = lw.second_moment_factors([out["err"]], [out["h"]])
            rs.append(r)
            cs.append(c)
        self.factors = (torch.stack(rs).mean(0), torch.stack(cs).mean(0))
        return {"precondition": mode, "rows": n}

    def _error_fn(self, projector, raw: bool = False):
        tokens, factors = self.label_tokens, self.factors

        def fn(model, batch):
            head = self._head(model)
            h = lw.answer_hidden(model, batch, head).float()
            err = lw.answer_error(h, head.weight.detach(), None if head.bias is None else head.bias.detach(),
                                  tokens.to(h.device)[batch["labels"]])
            if raw:
                return {"err": err, "h": h}
            e, hh = lw.precondition(err, h, factors)
            return {"g": lw.project_label_word_grads(e, hh, projector)}

        return fn

    def gradient_fn(self, pair, projector):
        return self._error_fn(projector)

    def gradient_collate(self, tokenizer):
        return self.collate(tokenizer)

    def projected_target(self, pair, projector):
        if isinstance(projector, FactoredProjector):
            return projected_lm_head_target(pair.state0, pair.statef, projector, self.cfg.model.head)
        key = f"{self.cfg.model.head}.weight"
        return -projector.project((pair.statef[key].float() - pair.state0[key].float()).flatten()[None])[0]
