"""The project's Hydra config without the entry point: where it lives, its resolvers, composing it.

    from src.config import compose_config
    cfg = compose_config(["task=sft", "k=100"])   # what ``python -m src.main task=sft k=100`` runs

The command line (``src.main``), the Python API (``src.api``), the benchmarks (``src.bench``) and the
tests all compose through here, so none of them imports the entry point.

- ``CONF_DIR``: the repository's ``conf/`` folder (the root config ``config.yaml`` and its groups).
- ``register_resolvers()``: ``${asset:name}``, a file shipped in ``src/data/assets``.
- ``quiet_libraries()``: keep warnings only from libraries that repeat banners on every call.
- ``compose_config(overrides)``: the root config with Hydra overrides, as the command line composes it.
"""
from __future__ import annotations

import logging
from pathlib import Path

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
ASSETS_DIR = Path(__file__).resolve().parent / "data" / "assets"


def register_resolvers() -> None:
    """``${asset:name}``: a file shipped in src/data/assets (so configs need no absolute paths)."""
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("asset"):
        OmegaConf.register_new_resolver("asset", lambda name: str(ASSETS_DIR / name))


def quiet_libraries() -> None:
    """Lightning repeats the same device banner for every fit/predict call; keep warnings only."""
    for name in ("lightning.pytorch", "lightning.fabric", "transformers.modeling_utils"):
        logging.getLogger(name).setLevel(logging.WARNING)
    import warnings

    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*LeafSpec.*")


def compose_config(overrides=()):
    """The root config (``conf/config.yaml``) composed with ``overrides``, resolvers registered."""
    from hydra import compose, initialize_config_dir

    register_resolvers()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))
