"""The selector registry: a plain spec (``{"_target_": "src.selectors.select.SelectSelector", options...}``,
what ``conf/selector/<name>.yaml`` holds; ``src.config.selector_specs`` reads them) names each implementation.

``build_selectors(specs)`` builds every spec into a selector keyed by its name; an option a selector
rejects, or a target that is not a ``Selector``, fails in one line before any data or model is loaded.

A spec may also say which gradients its selector selects on (``gradients: {precondition: none,
checkpoints: theta_f, P: 1}``): the paper's SELECT on raw gradients beside a default on others, in one job.
Those keys replace the run's own gradient options for that selector only
(``GradientOptions.with_selector``); selectors that share options share one gradient store.
"""
from __future__ import annotations

from src.errors import UserError
from src.options import locate
from src.selectors.base import Selector


def build_selectors(specs: dict[str, dict]) -> dict[str, Selector]:
    """Each spec built, in order, keyed by the selector's name; a later spec whose key is the name of one
    already built (a baseline that is also the main selector) is skipped."""
    sels: dict[str, Selector] = {}
    for key, spec in specs.items():
        if key not in sels:
            sel = _instantiate(spec, key)
            sels.setdefault(sel.name, sel)
    return sels


def _instantiate(spec: dict, name: str) -> Selector:
    options = dict(spec)
    gradients = dict(options.pop("gradients", None) or {})
    target = options.pop("_target_", None)
    if target is None:
        raise UserError(f"selector '{name}' has no _target_ (the class that implements it): {spec}")
    try:
        sel = locate(target)(**options)
    except UserError as e:
        raise UserError(f"selector '{name}': {e}") from e
    except Exception as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
        raise UserError(f"could not build selector '{name}' from {spec}: {first}") from e
    if not isinstance(sel, Selector):
        raise UserError(f"selector '{name}' is a {type(sel).__name__}, not a src.selectors.base.Selector")
    sel.gradients = gradients
    return sel
