"""The project's own small causal base LM: formats, corpus exclusion, tokenizer, tiny pretrain + cache."""
import gzip
import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from src.lm import base_lm
from src.lm.base_lm import (ensure_base_lm, format_prompt, format_response, pretraining_texts,
                            train_tokenizer)

ROOT = Path(__file__).resolve().parents[1]
ASSET = ROOT / "src" / "data" / "assets" / "wordnet_glosses.jsonl.gz"
EXCLUDE = ["noun.animal", "noun.plant", "noun.food"]
LEAVE_OUT = {"n": 2, "keep": [1]}
# A model small enough to pretrain in a second or two on 2 cores.
TINY = dict(vocab_size=300, n_embd=16, n_layer=1, n_head=2, n_positions=32, seq_len=32, batch_size=8,
            max_steps=5, max_texts=300, log_every=1)


@pytest.fixture(scope="module")
def records():
    with gzip.open(ASSET, "rt") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def texts():
    return pretraining_texts(ASSET, EXCLUDE, seed=0, leave_out=LEAVE_OUT)


def test_formats():
    assert format_prompt("dog", "noun.animal") == "dog (noun.animal):"
    assert format_response("a domestic canine") == " a domestic canine"
    assert format_prompt("hot dog", "noun.food") + format_response("a sausage") == "hot dog (noun.food): a sausage"


def test_pretraining_texts_leave_out_a_hash_half_and_excluded_definitions(records, texts):
    from src.data.buckets import id_bucket

    corpus = set(texts)
    left_out = [r for r in records if id_bucket(r["id"], 2) == 1]
    excluded = [r for r in records if r["lexname"] in EXCLUDE and id_bucket(r["id"], 2) == 0]
    kept = [r for r in records if r["lexname"] not in EXCLUDE and id_bucket(r["id"], 2) == 0]
    assert 0.45 < len(left_out) / len(records) < 0.55 and excluded and kept
    text = lambda r: format_prompt(r["words"][0], r["lexname"]) + format_response(r["definition"])  # noqa: E731
    kept_examples = {e for r in kept + excluded for e in r["examples"]}
    for r in left_out[:: max(1, len(left_out) // 300)]:  # neither its definition nor its own examples
        assert text(r) not in corpus
        assert not any(e in corpus for e in r["examples"] if e not in kept_examples)
    for r in excluded[:: max(1, len(excluded) // 300)]:
        assert text(r) not in corpus
        assert all(e in corpus for e in r["examples"])  # general English stays in
    for r in kept[:: max(1, len(kept) // 300)]:
        assert text(r) in corpus
    assert not any(f"({lex}):" in t for t in texts for lex in EXCLUDE)
    # shuffled with the seed: reproducible, and a different seed gives a different order
    assert texts[:50] == pretraining_texts(ASSET, EXCLUDE, seed=0, leave_out=LEAVE_OUT)[:50]
    assert texts[:50] != pretraining_texts(ASSET, EXCLUDE, seed=1, leave_out=LEAVE_OUT)[:50]


def test_tokenizer_round_trips_and_has_pad_eos(texts):
    tok = train_tokenizer(texts[:500], vocab_size=400, model_max_length=48)
    assert tok.eos_token == tok.pad_token == tok.bos_token == "<|endoftext|>"
    assert tok.pad_token_id == tok.eos_token_id is not None
    assert tok.model_max_length == 48 and len(tok) <= 400
    for t in [*texts[:20], "oak (noun.plant): a tree — naïve café 東京 😀", "  two  spaces\tand tab"]:
        ids = tok(t).input_ids
        assert tok.eos_token_id not in ids  # EOS is appended by whoever packs/formats, not silently
        assert tok.decode(ids) == t


def test_tiny_pretrain_loads_generates_and_is_reused(tmp_path, caplog):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cache = tmp_path / "cache"
    with caplog.at_level(logging.INFO, logger="src.lm.base_lm"):
        folder = Path(ensure_base_lm(TINY, cache))
    assert folder.parent == cache / "base_lm" and folder.is_dir()
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".tmp")]  # temp folder renamed away
    meta = json.loads((folder / "pretrain_meta.json").read_text())
    assert meta["steps"] == 5 and meta["n_texts"] == 300 and meta["heldout_loss"] > 0
    assert meta["config"]["leave_out"] == LEAVE_OUT and meta["config"]["exclude_lexnames"] == []

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert tok.eos_token_id == tok.pad_token_id == model.config.eos_token_id
    ids = tok(format_prompt("oak", "noun.plant"), return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tok.eos_token_id)
    assert out.shape[1] > ids.shape[1]

    # second call: reused, not retrained
    mtime = (folder / "pretrain_meta.json").stat().st_mtime_ns
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="src.lm.base_lm"):
        again = ensure_base_lm(OmegaConf.create(TINY), cache)  # a DictConfig works too
    assert Path(again) == folder
    assert "reusing" in caplog.text and "pretraining" not in caplog.text
    assert (folder / "pretrain_meta.json").stat().st_mtime_ns == mtime

    # a changed config gets its own folder; the defaults hash the same whether given or implied
    assert base_lm.base_lm_dir({**TINY, "n_embd": 32}, cache) != folder
    assert base_lm.base_lm_dir({**TINY, "seed": 0}, cache) == folder


def test_killed_run_leaves_nothing_reusable(tmp_path, monkeypatch):
    def boom(cfg, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(base_lm, "_train", boom)
    with pytest.raises(KeyboardInterrupt):
        base_lm.pretrain(TINY, tmp_path)
    assert not base_lm.base_lm_dir(TINY, tmp_path).exists()
    assert not list((tmp_path / "base_lm").iterdir())


def test_default_yaml_matches_code_defaults():
    cfg = base_lm.default_cfg()
    assert set(cfg) == set(base_lm.DEFAULTS)
    assert Path(cfg["asset_path"]) == ASSET
    assert base_lm.resolve_cfg(cfg) == {**base_lm.DEFAULTS, "asset_path": cfg["asset_path"]}
    with pytest.raises(ValueError, match="unknown"):
        base_lm.resolve_cfg({"n_embed": 8})
