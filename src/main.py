"""Entry point: ``python -m src.main [group=option ...] [key=value ...]``.

A thin Hydra wrapper around ``src.pipeline.run``: compose config, set up the logger,
run, write ``results.json`` and print the comparison table. Bad input (``UserError``)
ends the run with one line on stderr and exit code 2; earlier outputs are untouched.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from src.config import CONF_DIR, quiet_libraries, register_resolvers
from src.errors import UserError
from src.tracking import finish, log_run, make_logger

log = logging.getLogger("src.main")


def print_table(res: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    if "reference" not in res:  # recover mode without true data: where the selections are
        c = res["config"]
        t = Table(title=f"weights2data recover ({res['task']}): k={c['k']} d={c['d']} P={c['P']} "
                        f"from {res['n_seed']} seed rows (all scores: {res['scores']})")
        for col in ("selector", "picks", "objective after the last pick", "selection"):
            t.add_column(col)
        for r in res["results"]:
            obj = "" if r["objective"] is None else f"{r['objective']:.4f}"
            t.add_row(r["selector"], str(r["k"]), obj, r["selection"])
        Console(width=160).print(t)
        return
    c, m, ref = res["config"], res["metric"], res["reference"]
    t = Table(title=f"weights2data ({res['task']}): k={c['k']} d={c['d']} P={c['P']} rng={c['rng']}")
    for col in ("selector", m, "OT distance", "what the picks are"):
        t.add_column(col)
    for r in res["results"]:
        # Class balance of the training labels (classification), else the picks' source groups, largest first.
        shares = r["class_balance"] or dict(sorted((r.get("groups") or {}).items(), key=lambda kv: -kv[1])[:4])
        name = "expert (k true rows)" if r["selector"] == "expert" else r["selector"]
        t.add_row(name, f"{r[m]:.4f}", f"{r['ot_distance']:.4f}",
                  " ".join(f"{k.split('.')[-1]}:{v:.2f}" for k, v in shares.items()))
    # The references are models, not selections: θf is what the paper's tables call "expert".
    t.add_row("θf (the finetuned model)", f"{ref[f'thetaf_{m}']:.4f}", "", "reference, not a selection")
    t.add_row("θ0 (the base model)", f"{ref[f'theta0_{m}']:.4f}", "", "reference, not a selection")
    Console(width=140).print(t)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from src.pipeline import run  # heavy imports only once a run really starts

    quiet_libraries()
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    logger = None
    try:
        logger = make_logger(cfg, out_dir)
        res = run(cfg, out_dir, logger=logger)
        (out_dir / "results.json").write_text(json.dumps(res, indent=2))
        log_run(logger, res, out_dir)  # timings, metrics, results table, selections artifact
        print_table(res)
        log.info("results written to %s", out_dir / "results.json")
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    finally:
        finish(logger)  # a crashed run must not leave a W&B process hanging a multirun


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    register_resolvers()
    main()
