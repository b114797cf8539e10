"""Experiment tracking for a run: a Lightning logger (W&B by default) and what a finished run logs.

W&B is offline unless ``WANDB_MODE=online`` (conf/logger/wandb.yaml reads it; the default here too), so
nothing needs network; ``wandb sync <run>/wandb/offline-run-*`` uploads later. The runs of one Hydra
multirun share a W&B group: the sweep folder's name.

A finished run logs, to any Lightning logger: ``timings/<stage>`` (seconds), ``<selector>/<metric>``
(the task's metric: accuracy, or perplexity for SFT), ``<selector>/ot_distance`` and
``reference/theta{0,f}_<metric>``; to W&B only, also a ``results``
table (the printed table's rows, θf and θ0 included, plus every field the selectors report) and the run's
``selections/*.json`` as an artifact of type ``selection``.
"""
from __future__ import annotations

import os
from pathlib import Path

from src.config import to_plain


def make_logger(cfg, out_dir: Path):
    """The configured Lightning logger (``cfg.logger``), or None for ``logger=none``."""
    if not cfg.get("logger") or "_target_" not in cfg.logger:
        return None
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import instantiate

    os.environ.setdefault("WANDB_MODE", "offline")
    hc = HydraConfig.get()
    group = cfg.logger.get("group") or (Path(hc.sweep.dir).name if hc.mode.name == "MULTIRUN" else None)
    name = f"{Path(hc.sweep.dir).name}-{out_dir.name}" if hc.mode.name == "MULTIRUN" else out_dir.name
    logger = instantiate(cfg.logger, save_dir=str(out_dir), name=name, group=group)
    logger.log_hyperparams(to_plain(cfg))
    return logger


def _is_wandb(logger) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return isinstance(logger, WandbLogger)


def scalar_metrics(res: dict) -> dict[str, float]:
    """The flat metrics of a results dict: per-selector task metric / OT distance, reference, stage timings."""
    metrics = (res.get("metric", "accuracy"), "ot_distance")
    out = {f"{r['selector']}/{m}": float(r[m]) for r in res["results"] for m in metrics if r.get(m) is not None}
    out.update({f"reference/{k}": float(v) for k, v in res.get("reference", {}).items()})
    out.update({f"timings/{k}": float(v) for k, v in res.get("timings", {}).items()})
    return out


def table_rows(res: dict) -> tuple[list[str], list[list]]:
    """Columns and rows of the W&B results table: the run's printed table (``src.results``) with numbers as
    numbers, then every other field the selectors report (None where a selector has none) and the
    composition of the picks as ``balance/<name>`` columns."""
    from src.results import aggregate, table

    return table(aggregate([res]), values=True, details=True)


def log_run(logger, res: dict, out_dir: Path) -> None:
    """Log a finished run (see the module docstring). Works with any Lightning logger; W&B gets more."""
    if logger is None:
        return
    logger.log_metrics(scalar_metrics(res))
    if not _is_wandb(logger):
        return
    import wandb

    run = logger.experiment

    cols, data = table_rows(res)
    run.log({"results": wandb.Table(columns=cols, data=data)})
    files = sorted((out_dir / "selections").glob("*.json"))
    if files:
        c = res["config"]
        art = wandb.Artifact(f"selections-{run.id}", type="selection",
                             description="indices (and seed-corpus ids) each selector picked",
                             metadata={k: c.get(k) for k in ("d", "P", "k", "rng")})
        for f in files:
            art.add_file(str(f), name=f.name)
        run.log_artifact(art)


def finish(logger) -> None:
    """Close the W&B run (also after a crash, so a multirun's next job does not hang on it)."""
    if logger is not None and _is_wandb(logger):
        import wandb

        wandb.finish()
