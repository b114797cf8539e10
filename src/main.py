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
from omegaconf import DictConfig

from src.config import CONF_DIR, quiet_libraries, register_resolvers
from src.errors import UserError
from src.tracking import finish, log_run, make_logger

log = logging.getLogger("src.main")


def print_table(res: dict) -> None:
    """The run's comparison table (``src.results``), with where a recover run wrote its picks."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from src.results import aggregate, notes, table

    c, rows = res["config"], aggregate([res])
    if "reference" not in res:  # recover mode without true data: the picks and where they are
        title = (f"weights2data recover ({res['task']}): k={c['k']} d={c['d']} P={c['P']} "
                 f"from {res['n_seed']} seed rows (all scores: {res['scores']})")
        below = [f"{r['selector']}: {r['selection']}" for r in res["results"]]
    else:
        title = f"weights2data ({res['task']}): k={c['k']} d={c['d']} P={c['P']} rng={c['rng']}"
        below = notes(rows)
    columns, cells = table(rows)
    t = Table(title=escape(title), min_width=min(len(title) + 4, 160))
    for col in columns:
        t.add_column(escape(col), no_wrap=col == "selector")
    for line in cells:
        t.add_row(*map(escape, line))
    console = Console(width=160)
    console.print(t)
    for line in below:
        console.print(escape(line), soft_wrap=True)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    logger = None
    try:
        # Bad options fail here in one line, before Lightning, W&B and the pipeline are even imported.
        from src.checks import preflight
        from src.config import run_options
        from src.selectors.registry import build_selectors

        opts = run_options(cfg)
        preflight(opts, build_selectors(opts.selectors))
        quiet_libraries()  # imports Lightning and transformers: seconds a bad option need not wait
        from src.pipeline import run  # heavy imports only once a run really starts

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
