"""Shared fixtures: offline environment, the real Hydra config shrunk to tiny sizes."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (make test: one worker per core) each worker, and each subprocess a test starts, keeps to
# one thread: tiny models gain nothing from intra-op threads, and two workers with a thread per core each
# would oversubscribe the machine.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

# Models that are made once and keyed by what made them (the tiny base LMs) are shared by the whole
# session, subprocesses included; every other stage caches per test, in the test's own cache_dir.
os.environ.setdefault("W2D_MODEL_CACHE_DIR", tempfile.mkdtemp(prefix="w2d-test-models-"))

import pytest  # noqa: E402
import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

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


# The embedded base LM shrunk to seconds of pretraining, for the causal-LM tasks' tests.
TINY_BASE_LM = ["model=wordnet_lm", "base_lm.n_embd=16", "base_lm.n_layer=1", "base_lm.n_head=2",
                "base_lm.vocab_size=300", "base_lm.max_steps=5", "base_lm.max_texts=300"]


def compose_cfg(overrides=(), tmp_path=None):
    extra = [f"cache_dir={tmp_path / 'cache'}"] if tmp_path is not None else []
    return compose_config([*TINY, *extra, *overrides])


@pytest.fixture
def tiny_cfg(tmp_path):
    def make(*overrides):
        return compose_cfg(overrides, tmp_path)

    return make


class LargestTensor(TorchDispatchMode):
    """Records the numel of the largest tensor any torch op allocates while active (views of an
    op's inputs, e.g. W.t() inside F.linear, share their storage and are not counted); with
    ``dtypes``, only tensors of those dtypes count."""

    def __init__(self, dtypes=None):
        super().__init__()
        self.largest, self.dtypes = 0, dtypes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = torch.utils._pytree.tree_leaves((args, kwargs))
        inputs = {x.untyped_storage().data_ptr() for x in leaves if isinstance(x, torch.Tensor)}
        for o in torch.utils._pytree.tree_leaves(out):
            if (isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in inputs
                    and (self.dtypes is None or o.dtype in self.dtypes)):
                self.largest = max(self.largest, o.numel())
        return out
