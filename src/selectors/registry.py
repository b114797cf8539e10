"""The selector registry: Hydra ``_target_`` in ``conf/selector/<name>.yaml`` names each implementation.

``build_selectors(cfg)`` builds the main ``selector`` plus every name in ``baselines``; an unknown name,
an option a selector rejects, or a target that is not a ``Selector`` fails in one line, before any data
or model is loaded.

A selector config may also say which gradients it selects on (``gradients: {precondition: none,
checkpoints: theta_f, P: 1}``): the paper's SELECT on raw gradients beside a default on others, in one job.
Those keys override the run's own gradient options for that selector only (``GRADIENT_OPTIONS`` maps
them to the config); selectors that share options share one gradient store.
"""
from __future__ import annotations

from hydra.utils import instantiate
from omegaconf import OmegaConf

from src.config import CONF_DIR
from src.errors import UserError, did_you_mean
from src.selectors.base import Selector


def build_selectors(cfg) -> dict[str, Selector]:
    """The main ``selector`` plus every name in ``baselines``, each from conf/selector/<name>.yaml."""
    known = sorted(p.stem for p in (CONF_DIR / "selector").glob("*.yaml"))
    main = _instantiate(cfg.selector, "selector")
    sels = {main.name: main}
    for name in cfg.get("baselines") or []:
        if name not in known:
            raise UserError(f"Unknown selector '{name}'.{did_you_mean(name, known)}")
        if name not in sels:
            sels[name] = _instantiate(OmegaConf.load(CONF_DIR / "selector" / f"{name}.yaml"), name)
    return sels


# A selector's ``gradients`` key → the run config field it overrides.
GRADIENT_OPTIONS = {"precondition": "gradient.precondition", "projection": "gradient.projection",
                    "checkpoints": "checkpoints", "P": "P", "layers": "gradient.layers", "layer_d": "gradient.layer_d",
                    "layer_norm": "gradient.layer_norm", "layer_weights": "gradient.layer_weights"}


def with_gradient_options(cfg, options: dict):
    """A copy of the run config with a selector's gradient options applied."""
    if not options:
        return cfg
    unknown = sorted(set(options) - set(GRADIENT_OPTIONS))
    if unknown:
        raise UserError(f"selector gradients: unknown option(s) {unknown}; known: {sorted(GRADIENT_OPTIONS)}")
    out = cfg.copy()
    for key, value in options.items():
        OmegaConf.update(out, GRADIENT_OPTIONS[key], value, merge=False)
    return out


def _instantiate(sel_cfg, name) -> Selector:
    plain = OmegaConf.to_container(sel_cfg, resolve=True)
    gradients = dict(plain.pop("gradients", None) or {})
    sel_cfg = OmegaConf.create(plain)
    try:
        sel = instantiate(sel_cfg)
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, UserError):  # Hydra wraps what the selector raised
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise UserError(f"selector '{name}': {cause}") from e
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"could not build selector '{name}' from {OmegaConf.to_container(sel_cfg)}: {first}") from e
    if not isinstance(sel, Selector):
        raise UserError(f"selector '{name}' is a {type(sel).__name__}, not a src.selectors.base.Selector")
    sel.gradients = gradients
    return sel
