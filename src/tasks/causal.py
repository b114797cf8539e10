"""What every causal-LM task shares: the model, one right-padding collate, the response loss and the
LM-head gradient stage.

SFT, raw-text LM and label-word classification are one task shape: a prompt, then a response whose
tokens the loss predicts. SFT's response is θf's generated text (+ EOS); LM's prompt is the BOS and
the document is the response; label-word classification's response is the one token of the class's
label word after "<text>\\nTopic:". So all three train on ``response_nll`` (the token mean over the
batch), and their gradient is ``src.gradients.last_layer`` at the response positions of the LM head.
"""
from __future__ import annotations

import functools
import logging

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader

from src.collate import PromptResponseCollate
from src.errors import UserError
from src.gradients.last_layer import response_mask, response_positions, second_moments
from src.gradients.last_layer import projected_target as layer_target
from src.gradients.projectors import FactoredProjector, make_projector
from src.models import _from_hub
from src.options import GradientOptions, RunOptions, TaskOptions
from src.tasks.base import GradientSpec, Task

log = logging.getLogger(__name__)


def response_nll(model, batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example summed NLL of the response tokens and their count (prompt and padding masked)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    mask = response_mask(batch["input_ids"], batch["prompt_lengths"], batch["attention_mask"]).float()
    nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), batch["input_ids"][:, 1:], reduction="none")
    return (nll * mask[:, :-1]).sum(1), mask.sum(1)


def per_example_nll(model, batch) -> torch.Tensor:
    """[n] each example's summed response NLL: the loss whose per-example gradients the gradient pass takes."""
    return response_nll(model, batch)[0]


def token_mean_loss(model, batch):
    """The training loss: the mean over every response token of the batch (each token counts once)."""
    nll, n = response_nll(model, batch)
    return nll.sum() / n.sum().clamp_min(1), len(n)


def untie_head(model) -> None:
    """Give a tied LM head its own copy of the embedding matrix (before θf is made from θ0), so the head's
    delta θf − θ0 is the head's own update: what per-example head gradients model. A tied head's delta
    also holds the input-embedding updates."""
    head, emb = model.get_output_embeddings(), model.get_input_embeddings()
    if head is not None and head.weight is emb.weight:
        head.weight = torch.nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
        log.info("model.untie_head: the LM head is now its own copy of the input embeddings")


def _item_length(item) -> int:
    """Sort key for mini-batches (less padding): characters of an item's texts."""
    return sum(len(x) for x in item if isinstance(x, str))


def _head_shape(opts: TaskOptions) -> tuple[int, int] | None:
    """(V, H) of the LM head where it is known without loading the model: the embedded LM's config, or a
    local folder's config.json; None otherwise."""
    import json
    from pathlib import Path

    name = str(opts.model.name_or_path)
    if name == "base_lm":
        return int(opts.base_lm["vocab_size"]), int(opts.base_lm["n_embd"])
    conf = Path(name) / "config.json"
    if conf.is_file():
        c = json.loads(conf.read_text())
        V, H = c.get("vocab_size"), c.get("hidden_size") or c.get("n_embd")
        return (int(V), int(H)) if V and H else None
    return None


class CausalLMTask(Task):
    """Base of the causal-LM tasks: subclasses say how examples become (prompt, response) items."""

    eos = True              # append EOS to text responses
    keep_prompt_end = False

    @classmethod
    def check(cls, run: RunOptions, gradient: GradientOptions) -> None:
        if gradient.projection == "exact":
            cls._check_exact(run, gradient)

    @classmethod
    def _check_exact(cls, run: RunOptions, gradient: GradientOptions) -> None:
        """projection=exact needs one loss position per example, and a memory bound known before any compute."""
        from src.gradients.exact import check_bound

        if cls.name in ("lm", "sft"):
            raise UserError(f"gradient.projection=exact needs one loss position per example (label words); task="
                            f"{cls.name} scores every token of a response: use gradient.projection=factored")
        shape = _head_shape(run.task)
        seed, n = run.seed, run.seed.max_examples
        if shape is None or n is None:  # checked again before the embedding, with the real sizes
            check_bound(0, 1, 1, gradient.exact_max_rows)
            return
        leaked = round(float(seed.leak_fraction or 0) * int((run.dataset and run.dataset.n_train) or 0))
        rows = int(gradient.P) * (int(n) + int(seed.unseen_rows or 0) + leaked)
        check_bound(rows, *shape, gradient.exact_max_rows)

    # -- models -------------------------------------------------------------------
    def _path(self) -> str:
        name = str(self.opts.model.name_or_path)
        if name == "base_lm":  # the project's own small LM, pretrained once and cached
            from src.lm.base_lm import ensure_base_lm

            return ensure_base_lm(self.opts.base_lm, self.opts.model_cache_dir)
        if name.startswith("gguf:"):  # a GGUF file in a Python package, converted once into a model folder
            from src.lm.gguf import ensure_gguf_model

            return ensure_gguf_model(name, self.opts.model_cache_dir)
        return name

    def build_base(self, data):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        path = self._path()
        tok = _from_hub(AutoTokenizer.from_pretrained, self.opts.model.tokenizer or path)
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = "right"
        torch.manual_seed(self.opts.rng)
        if path.startswith("random:"):  # tests: a tiny random model sized to the tokenizer
            config = AutoConfig.for_model(path[7:], vocab_size=len(tok), **dict(self.opts.model.config or {}))
            model = AutoModelForCausalLM.from_config(config)
        else:
            self._check_causal(_from_hub(AutoConfig.from_pretrained, path))
            model = _from_hub(AutoModelForCausalLM.from_pretrained, path)
        if self.opts.model.untie_head:
            untie_head(model)
        self._check_head(model)
        return model.eval(), tok

    def _check_causal(self, config) -> None:
        """An encoder (BERT, MiniLM) would load as a causal LM with a fresh, random head: refuse it."""
        archs = config.architectures or []
        if archs and not getattr(config, "is_decoder", False) and not any("CausalLM" in a or "LMHead" in a for a in archs):
            raise UserError(f"model '{self.opts.model.name_or_path}' ({', '.join(archs)}) is not a causal LM with an LM "
                            f"head; task={self.name} needs one (model=wordnet_lm, smollm2, gpt2, ...)")

    def _check_head(self, model) -> None:
        head = self.opts.model.head
        try:
            model.get_submodule(head)
        except AttributeError:
            raise UserError(f"{type(model).__name__} has no module '{head}' (model.head); a causal LM's head is "
                            "usually lm_head") from None
        if model.get_output_embeddings().weight is model.get_input_embeddings().weight:
            log.info("%s: the LM head is tied to the input embeddings, so θf − θ0 on it also holds the embedding "
                     "updates, which per-example head gradients do not model (model.untie_head=true separates them)",
                     self.name)

    def load_finetuned(self, path, data):
        from transformers import AutoModelForCausalLM

        return _from_hub(AutoModelForCausalLM.from_pretrained, path)

    def collate(self, tokenizer) -> PromptResponseCollate:
        return PromptResponseCollate(tokenizer, self.opts.model.max_length, self.eos, self.keep_prompt_end)

    # -- training -----------------------------------------------------------------
    def training_items(self, examples: dict, tokenizer) -> list:
        """(prompt, response) pairs of ``examples``, as retraining and finetuning see them."""
        raise NotImplementedError

    def train(self, model, tokenizer, examples: dict, ft, prefix: str, logger=False, monitor=None):
        import lightning as L

        from src.training import fit

        L.seed_everything(self.opts.rng, workers=True, verbose=False)
        loader = DataLoader(self.training_items(examples, tokenizer), batch_size=ft.batch_size, shuffle=True,
                            collate_fn=self.collate(tokenizer), generator=torch.Generator().manual_seed(self.opts.rng))
        return fit(model, loader, ft, self.opts.trainer, logger, prefix, loss_fn=token_mean_loss,
                   monitor=monitor, head=self.opts.model.head)

    def _nll(self, model, tokenizer, items: list, batch_size: int) -> dict:
        """Per-item summed response NLL (``nll``) and response-token count (``n``)."""
        from src.training import run_predict

        def fn(m, batch):
            nll, n = response_nll(m, batch)
            return {"nll": nll, "n": n}

        return run_predict(model, items, self.collate(tokenizer), fn, batch_size=batch_size,
                           trainer=self.opts.trainer, length=_item_length)

    def text_stats(self, pair, items: list, batch_size: int) -> dict:
        """Two-model token statistics (``src.scores.token_stats``) of the response tokens of (prompt, response)
        ``items``: one pass under θf, one under θ0. Returned as ``stat_<name>`` autolabel columns."""
        from src.scores.token_stats import per_token, summarise
        from src.training import run_predict

        collate, width = CausalLMTask.collate(self, pair.tokenizer), int(self.opts.model.max_length)

        def fn(m, batch):
            logits = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            mask = response_mask(batch["input_ids"], batch["prompt_lengths"], batch["attention_mask"])
            return per_token(logits, batch["input_ids"], mask, width)

        runs = {name: run_predict(pair.load(alpha), items, collate, fn, batch_size=batch_size,
                                  trainer=self.opts.trainer, length=_item_length)
                for name, alpha in (("f", 1.0), ("0", 0.0))}
        stats = summarise(runs["f"]["lp"], runs["0"]["lp"], runs["f"]["hit"], runs["f"]["m"])
        return {f"stat_{k}": v for k, v in stats.items()}

    # -- gradients ------------------------------------------------------------------
    def gradient_items(self, seed, autolabels: dict, rows: range) -> list:
        """The (prompt, response) items of seed rows ``rows``: the work of one gradient shard."""
        raise NotImplementedError

    def _projector(self, pair, g: GradientOptions):
        W = pair.state0[f"{self.opts.model.head}.weight"]
        if g.projection == "exact":
            return None
        if g.projection in ("auto", "factored"):
            return FactoredProjector(W.shape[0], W.shape[1], d=g.d, seed=g.projector.seed)
        return make_projector(g.projector, in_dim=W.numel(), d=g.d)

    def _factors(self, pair, seed, autolabels, alphas, collate, positions, g: GradientOptions):
        """Adafactor's (r, c) from a seed subsample, averaged over the checkpoints (one preconditioner,
        as Adam's running second moment is one estimate over the whole trajectory); None for ``none``."""
        if g.precondition == "none":
            return None
        items = self._subsample(seed, autolabels, g)
        head = self.opts.model.head

        def fn(model, batch):
            module = model.get_submodule(head)
            r, c, m = second_moments(positions(model, batch), module.weight, None)
            return {"r": r, "c": c, "m": torch.tensor(float(m))}

        mean = self._checkpoint_means(pair, items, collate, fn, alphas, g, grad=False)
        return mean["r"], mean["c"]

    def _checkpoint_means(self, pair, items, collate, fn, alphas, g: GradientOptions, *, grad: bool) -> dict:
        """{key: Σ/m} of ``fn``'s per-batch sums (every key but the position count ``m``) over ``items``,
        at each checkpoint, averaged over the checkpoints: one Adafactor estimate for the whole trajectory."""
        from src.training import run_predict

        sums = [run_predict(pair.load(a), items, collate, fn, batch_size=g.batch_size, trainer=self.opts.trainer,
                            length=_item_length, reduce="sum", grad=grad) for a in alphas]
        return {key: torch.stack([s[key].double() / s["m"].clamp_min(1) for s in sums]).mean(0).float()
                for key in sums[0] if key != "m"}

    def _subsample(self, seed, autolabels, g: GradientOptions) -> list:
        """The items of ``precondition_rows`` seed rows drawn with the run's rng: where a preconditioner is fitted
        (the candidate pool itself, never the planted rows alone)."""
        n = min(len(seed), int(g.precondition_rows))
        rows = torch.randperm(len(seed), generator=torch.Generator().manual_seed(self.opts.rng))[:n].sort().values
        return [it for i in rows.tolist() for it in self.gradient_items(seed, autolabels, range(i, i + 1))]

    def _layer_factors(self, pair, seed, autolabels, alphas, names, collate, g: GradientOptions):
        """Each layer's Adafactor (r, c) from a seed subsample, averaged over the checkpoints as ``_factors``
        does for the last layer; None for ``precondition=none``."""
        if g.precondition == "none":
            return None
        from src.gradients.layers import layer_factors, layer_second_moments

        mean = self._checkpoint_means(pair, self._subsample(seed, autolabels, g), collate,
                                      lambda model, batch: layer_second_moments(model, batch, per_example_nll, names),
                                      alphas, g, grad=True)
        return layer_factors(mean, names)

    def _layers_spec(self, pair, seed, autolabels, alphas, g: GradientOptions):
        """Whole-model (or several-layer) gradients: ``src.gradients.layers``."""
        from src.gradients.layers import LayersSpec, choose_layers, layer_projectors

        names = choose_layers(pair.model, g.layers, self.opts.model.head)
        projectors = layer_projectors(pair.model, names, int(g.layer_d), int(g.projector.seed))
        collate = self.collate(pair.tokenizer)
        return LayersSpec(items=self.gradient_items, collate=collate, loss_fn=per_example_nll,
                          names=names, projectors=projectors, state0=pair.state0, statef=pair.statef,
                          unit=g.layer_norm == "unit", weights=g.layer_weights,
                          factors=self._layer_factors(pair, seed, autolabels, alphas, names, collate, g),
                          key={"loss": "token_sum", "fields": self.fields(), "max_length": self.opts.model.max_length,
                               "precondition": g.precondition, "precondition_rows": g.precondition_rows})

    def gradient_spec(self, pair, seed, autolabels: dict, alphas, gradient: GradientOptions) -> GradientSpec:
        g = gradient
        if str(g.layers) != "head":
            return self._layers_spec(pair, seed, autolabels, alphas, g)
        head = self.opts.model.head
        projector = self._projector(pair, g)
        collate = self.collate(pair.tokenizer)
        positions = functools.partial(response_positions, head=head)
        factors = self._factors(pair, seed, autolabels, alphas, collate, positions, g)
        exact = projector is None  # the target comes with the exact rows (src/gradients/exact.py)
        return GradientSpec(items=self.gradient_items, collate=collate, positions=positions, head=head,
                            projector=projector, exact=exact,
                            target=None if exact else layer_target(pair.state0, pair.statef, head, projector),
                            factors=factors,
                            key={"loss": "token_sum", "precondition": g.precondition,
                                 "precondition_rows": g.precondition_rows, **self.fields()})
