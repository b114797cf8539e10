"""The project's Hydra config without the entry point: where it lives, its resolvers, composing it.

    from src.config import compose_config
    cfg = compose_config(["task=sft", "k=100"])   # what ``python -m src.main task=sft k=100`` runs

The command line (``src.main``), the Python API (``src.api``), the benchmarks (``src.bench``) and the
tests all compose through here, so none of them imports the entry point.

- ``CONF_DIR``: the repository's ``conf/`` folder (the root config ``config.yaml`` and its groups).
- ``register_resolvers()``: ``${asset:name}``, a file shipped in ``src/data/assets``.
- ``quiet_libraries()``: keep warnings only from libraries that repeat banners on every call.
- ``compose_config(overrides)``: the root config with Hydra overrides, as the command line composes it.
- ``run_options(cfg)``: the composed config as a run's frozen options (``src.options``), checked; the
  selectors' specs read from ``conf/selector/<name>.yaml`` for every name in ``baselines``.
"""
from __future__ import annotations

import logging
from pathlib import Path

from src.errors import UserError, did_you_mean
from src.options import (EvalOptions, GenerationOptions, GradientOptions, ModelOptions, ProjectorOptions, RunOptions,
                         SelectionOptions, SourceOptions, TaskOptions, TrainerOptions, TrainOptions, build)

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ASSETS_DIR = Path(__file__).resolve().parent / "data" / "assets"


def register_resolvers() -> None:
    """``${asset:name}``: a file shipped in src/data/assets (so configs need no absolute paths)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", lambda name: str(ASSETS_DIR / name))


# Library messages a user cannot act on: the config of a converted or self-made model, inputs this project
# pads and masks itself, a tensor-parallel plan check of a model loaded on one device, and tips about other
# products.
UNACTIONABLE = ("`loss_type=None` was set in the config", "We strongly recommend passing in an `attention_mask`",
                "You may ignore this warning if your `pad_token_id`", "Token indices sequence length is longer than",
                "The following layers were not sharded", "Tip: For seamless cloud logging", "litlogger")


class _Unactionable(logging.Filter):
    def filter(self, record) -> bool:
        msg = record.getMessage()
        return not any(p in msg for p in UNACTIONABLE)


def quiet_libraries() -> None:
    """Lightning repeats the same device banner for every fit/predict call; keep warnings only, and drop the
    library messages a user cannot act on (``UNACTIONABLE``) at their handlers."""
    import lightning.pytorch  # noqa: F401  (it sets its loggers' level on import: import first, then quiet)

    for name in ("lightning.pytorch", "lightning.fabric", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    for logger in (hf_logging.get_logger(), logging.getLogger("lightning.pytorch"), logging.getLogger("lightning")):
        for handler in [*logger.handlers, *logging.getLogger().handlers]:
            if not any(isinstance(f, _Unactionable) for f in handler.filters):
                handler.addFilter(_Unactionable())
        if not any(isinstance(f, _Unactionable) for f in logger.filters):
            logger.addFilter(_Unactionable())
    import warnings

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def compose_config(overrides=()):
    """The root config (``conf/config.yaml``) composed with ``overrides``, resolvers registered."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def to_plain(cfg) -> dict:
    """A composed config as plain Python, interpolations resolved."""
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def selector_specs(cfg) -> dict[str, dict]:
    """The main ``selector`` (keyed ``selector``) and every name in ``baselines``, each a plain spec
    (``{"_target_": ..., options..., "gradients": {...}}``) read from conf/selector/<name>.yaml."""
    from omegaconf import OmegaConf

    register_resolvers()
    known = sorted(p.stem for p in (CONF_DIR / "selector").glob("*.yaml"))
    specs = {"selector": to_plain(cfg.selector)}
    for name in cfg.get("baselines") or []:
        if name not in known:
            raise UserError(f"Unknown selector '{name}'.{did_you_mean(name, known)}")
        specs.setdefault(name, OmegaConf.to_container(OmegaConf.load(CONF_DIR / "selector" / f"{name}.yaml"),
                                                      resolve=True))
    return specs


def run_options(cfg) -> RunOptions:
    """The run's options, every value checked (``UserError`` on the first bad one)."""
    c = to_plain(cfg)
    gradient = _gradient(c)
    dataset = None if c.get("dataset") is None else build(SourceOptions, c["dataset"], "dataset")
    retrain = build(TrainOptions, c["retrain"], "retrain")
    return RunOptions(task=_task(c, dataset, gradient, retrain), gradient=gradient,
                      seed=build(SourceOptions, c["seed"], "seed"), dataset=dataset,
                      finetune=build(TrainOptions, c["finetune"], "finetune"), retrain=retrain,
                      selection=build(SelectionOptions, c.get("selection"), "selection"), evaluation=_evaluation(c),
                      selectors=selector_specs(cfg), mode=c.get("mode", "experiment"), k=int(c["k"]),
                      classes=tuple(str(x) for x in c["classes"]) if c.get("classes") else None,
                      cache_dir=str(c["cache_dir"]))


def _gradient(c: dict) -> GradientOptions:
    """``gradient.*`` with the run-level ``d``, ``P``, ``checkpoints`` and the dense ``projector`` group."""
    proj = {k: v for k, v in (c.get("projector") or {}).items() if k != "_partial_"}  # in_dim comes at run time
    proj = build(ProjectorOptions, {"target": proj.pop("_target_", ProjectorOptions.target), **proj}, "projector")
    return build(GradientOptions, {**(c.get("gradient") or {}), "d": c["d"], "P": c["P"], "projector": proj,
                                   "checkpoints": c.get("checkpoints", "theta_f")}, "gradient")


def _task(c: dict, dataset: SourceOptions | None, gradient: GradientOptions, retrain: TrainOptions) -> TaskOptions:
    """What the task reads. Forward passes run at the gradient pass's batch size and evaluation at the
    retraining's; label words and the label-word prompt come from the dataset when it names them."""
    words, prompt = (dataset.label_words, dataset.lm_prompt) if dataset is not None else (None, None)
    generation = c.get("generation")
    return TaskOptions(
        name=c["task"], model=build(ModelOptions, c["model"], "model"),
        trainer=build(TrainerOptions, c["trainer"], "trainer"), rng=int(c["rng"]),
        batch_size=int(gradient.batch_size), eval_batch_size=int(retrain.eval_batch_size), base_lm=c.get("base_lm"),
        model_cache_dir=str(c.get("model_cache_dir") or c["cache_dir"]),
        generation=None if generation is None else build(GenerationOptions, generation, "generation"),
        label_words=tuple(words) if words else None,
        lm_prompt=prompt or (c.get("classify_lm") or {}).get("prompt") or TaskOptions.lm_prompt)


def _evaluation(c: dict) -> EvalOptions:
    emb, ot = c.get("embedder") or {}, c.get("ot") or {}
    return EvalOptions(embedder=emb.get("name_or_path", EvalOptions.embedder),
                       embed_batch_size=emb.get("batch_size", 128), embed_max_length=emb.get("max_length", 128),
                       ot_method=ot.get("method", "emd"), ot_reg=ot.get("reg", 0.1), max_true=ot.get("max_true", 2000))
