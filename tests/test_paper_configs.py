"""The paper's experiments as named configs: each composes to the paper's setting, and the same
code path runs end to end with a tiny random model of the same architecture family (the hub is
out of reach here, so the embedded WordNet data stands in for the hub datasets)."""
import pytest
from omegaconf import OmegaConf

from src.config import compose_config
from src.lm.base_lm import ensure_base_lm
from src.pipeline import run
from tests.conftest import TINY_BASE_LM, compose_cfg


def tiny_gpt2(tmp_path) -> list[str]:
    """Overrides that swap the paper's GPT-2 for a tiny random one of the same architecture (with the
    tiny base LM's byte-level BPE tokenizer, since GPT-2's own needs the hub) and shrink the run."""
    base = compose_cfg(TINY_BASE_LM, tmp_path)
    tokenizer = ensure_base_lm(OmegaConf.to_container(base.base_lm, resolve=True), base.model_cache_dir)
    return ["model.name_or_path=random:gpt2", f"model.tokenizer={tokenizer}", "model.max_length=48",
            "+model.config={n_embd: 32, n_layer: 1, n_head: 2, n_positions: 64}", "dataset.n_train=40",
            "dataset.n_test=24", "dataset.n_val=16", "seed.max_examples=60", "retrain.epochs=2", "finetune.epochs=1"]


PAPER_CLASSIFICATION = {"paper_ag_news": ("fancyzhx/ag_news", 4), "paper_dbpedia": ("fancyzhx/dbpedia_14", 14),
                        "paper_imdb": ("stanfordnlp/imdb", 2)}


@pytest.mark.parametrize("name", sorted(PAPER_CLASSIFICATION))
def test_paper_classification_configs_compose_to_the_paper_setting(name, tmp_path):
    cfg = compose_config([f"experiment={name}"])  # unshrunk: TINY would replace model, k, d, P
    assert (cfg.k, cfg.d, cfg.P, cfg.checkpoints) == (1000, 4096, 1, "theta_f")
    path, n_classes = PAPER_CLASSIFICATION[name]
    assert cfg.task == "classify_lm" and cfg.model.name_or_path == "gpt2" and cfg.model.head == "lm_head"
    assert cfg.dataset.path == path and len(cfg.dataset.label_words) == len(cfg.dataset.classes) == n_classes
    assert cfg.seed.path == "sentence-transformers/natural-questions" and cfg.seed.max_examples == 10000
    assert cfg.retrain.epochs == 100 and cfg.retrain.select_epoch == "val"
    assert "topk_balanced" in cfg.baselines and "expert" in cfg.baselines


def test_paper_ag_news_runs_end_to_end_with_a_tiny_random_gpt2(tmp_path):
    cfg = compose_cfg(["experiment=paper_ag_news", "dataset=wordnet_topics", "seed=wordnet",
                       "dataset.label_words=[' animal',' plant',' food',' object']", "baselines=[random,topk_balanced]",
                       *tiny_gpt2(tmp_path)], tmp_path)
    res = run(cfg, tmp_path / "run")
    assert res["task"] == "classify_lm" and res["config"]["model"]["head"] == "lm_head"
    assert [r["selector"] for r in res["results"]] == ["select", "random", "topk_balanced"]
    assert all(0 <= r["accuracy"] <= 1 for r in res["results"])


def test_paper_msmarco_composes_to_plain_lm_on_passages():
    cfg = compose_config(["experiment=paper_msmarco"])
    assert (cfg.task, cfg.k, cfg.d, cfg.P) == ("lm", 500, 4096, 1)
    assert cfg.model.name_or_path == "gpt2" and cfg.model.head == "lm_head"
    assert cfg.dataset.path == "sentence-transformers/msmarco-corpus" and cfg.dataset.text_field == "text"
    assert cfg.seed.path == "sentence-transformers/natural-questions" and cfg.seed.max_examples == 10000
    assert not cfg.dataset.get("prompt_template") and cfg.retrain.epochs == 100


def test_paper_msmarco_runs_end_to_end_with_a_tiny_random_gpt2(tmp_path):
    cfg = compose_cfg(["experiment=paper_msmarco", "dataset=wordnet_documents", "seed=wordnet_documents",
                       "baselines=[random]", *tiny_gpt2(tmp_path)], tmp_path)
    res = run(cfg, tmp_path / "run")
    assert res["task"] == "lm" and res["metric"] == "perplexity"
    assert [r["selector"] for r in res["results"]] == ["select", "random"]
    assert all(r["perplexity"] > 1 for r in res["results"])
