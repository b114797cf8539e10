"""Shared fixtures: offline environment, the real Hydra config shrunk to tiny sizes."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from src.config import CONF_DIR, compose_config  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONF = CONF_DIR

# Small enough that a whole pipeline run takes seconds on 2 CPU cores.
TINY = [
    "model=tiny_bert", "logger=none", "trainer.progress_bar=false",
    "dataset.n_train=40", "dataset.n_test=24", "seed.max_examples=60",
    "k=8", "d=16", "P=2", "finetune.epochs=1", "retrain.epochs=1",
    "gradient.shard_size=32", "gradient.batch_size=16",
]


def compose_cfg(overrides=(), tmp_path=None):
    extra = [f"cache_dir={tmp_path / 'cache'}"] if tmp_path is not None else []
    return compose_config([*TINY, *extra, *overrides])


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides):
        return compose_cfg(overrides, tmp_path)

    return make
