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

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ASSETS_DIR = Path(__file__).resolve().parent / "data" / "assets"


def register_resolvers() -> None:
    """``${asset:name}``: a file shipped in src/data/assets (so configs need no absolute paths)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", lambda name: str(ASSETS_DIR / name))


# Library messages a user cannot act on: the config of a converted or self-made model, inputs this project
# pads and masks itself, and tips about other products.
UNACTIONABLE = ("`loss_type=None` was set in the config", "We strongly recommend passing in an `attention_mask`",
                "You may ignore this warning if your `pad_token_id`", "Token indices sequence length is longer than",
                "Tip: For seamless cloud logging", "litlogger")


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


def run_options(cfg):
    """The run's options (``src.options.RunOptions``), every value checked (``UserError`` on the first bad one)."""
    from src.options import RunOptions

    plain = to_plain(cfg)
    plain.pop("hydra", None)
    return RunOptions.from_dict(plain, selector_specs(cfg))
