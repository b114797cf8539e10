"""A real user's data and machine: each either just works or fails in one line before any expensive
stage, leaving a previous run's outputs in the same folder byte for byte as they were."""
import gzip
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from src.config import run_options
from src.data.loading import load_seed, load_task
from src.errors import UserError
from src.pipeline import run
from tests.conftest import ROOT, TINY
from tests.test_sft import TINY_SFT


def snapshot(folder):
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def earlier(tmp_path):
    """A folder holding a previous run's outputs."""
    out = tmp_path / "run"
    (out / "selections" / "select").mkdir(parents=True)
    (out / "results.json").write_text('{"earlier": true}')
    (out / "selections" / "select.json").write_text('{"indices": [1, 2]}')
    (out / "selections" / "select" / "selection.jsonl").write_text('{"rank": 1}\n')
    return out


def fails_cleanly(cfg, out, pattern, tmp_path):
    before = snapshot(out)
    with pytest.raises(UserError) as e:
        run(cfg, out)
    msg = str(e.value)
    assert "\n" not in msg and re.search(pattern, msg), msg
    assert snapshot(out) == before
    assert not (tmp_path / "cache" / "autolabel").exists()  # nothing expensive ran
    return msg


def write_labelled_csv(path, labels):
    rows = ["text,label"] + [f"gloss number {i} about topic {y},{y}" for i, y in enumerate(labels)]
    path.write_text("\n".join(rows) + "\n")


def test_integer_labels_not_starting_at_zero_are_mapped_and_logged(tiny_cfg, tmp_path, caplog):
    csv = tmp_path / "agnews_like.csv"
    write_labelled_csv(csv, [1, 2, 3, 4] * 15)  # AG News ships its labels as 1–4
    cfg = tiny_cfg("dataset=local", f"dataset.path={csv}", "dataset.n_train=null", "dataset.n_test=null")
    with caplog.at_level(logging.INFO):
        data = load_task(run_options(cfg).dataset, 0)
    assert data.classes == ["1", "2", "3", "4"]
    assert set(data.train["label"]) | set(data.test["label"]) == {0, 1, 2, 3}
    assert "integer labels [1, 2, 3, 4] mapped to class indices [0, 1, 2, 3]" in caplog.text
    # With class names, 1..C is read as 1-based: label 1 is the first class.
    named = load_task(run_options(tiny_cfg("dataset=local", f"dataset.path={csv}",
                                           "dataset.classes=[World,Sports,Business,Tech]")).dataset, 0)
    assert named.classes == ["World", "Sports", "Business", "Tech"]
    assert set(named.train["label"]) <= {0, 1, 2, 3}
    # And the whole run trains and scores on them (it used to die in the loss: "Target 4 is out of bounds").
    res = run(tiny_cfg("dataset=local", f"dataset.path={csv}", "seed.exclude_true=false", "baselines=[]"),
              tmp_path / "ok")
    assert 0.0 <= res["results"][0]["accuracy"] <= 1.0


def test_integer_labels_that_fit_no_class_list_fail_before_any_model(tiny_cfg, tmp_path, earlier):
    csv = tmp_path / "bad_labels.csv"
    write_labelled_csv(csv, [0, 5, 9] * 10)
    cfg = tiny_cfg("dataset=local", f"dataset.path={csv}", "dataset.classes=[a,b,c]")
    fails_cleanly(cfg, earlier, r"integer labels \[0, 5, 9\] do not fit the 3 classes", tmp_path)
    assert not (tmp_path / "cache" / "thetaf").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_gpu_trainer_without_a_gpu_is_one_line(tiny_cfg, tmp_path, earlier):
    fails_cleanly(tiny_cfg("trainer=gpu"), earlier, r"trainer.accelerator=gpu but torch sees no CUDA GPU.*trainer=cpu",
                  tmp_path)


def test_finetuned_path_that_does_not_exist_says_so(tiny_cfg, tmp_path, earlier):
    # Absolute, ./relative, and (offline, as tests run) a relative path that could pass for a hub id.
    for path in (tmp_path / "no_such_model", "./models/no_such_model", "outputs/no_such_model"):
        msg = fails_cleanly(tiny_cfg(f"model.finetuned={path}"), earlier, "model.finetuned: path .* does not exist",
                            tmp_path)
        assert "repo" not in msg.lower()  # not hub repo-id advice


def test_corpus_with_blank_non_text_and_duplicate_rows_is_cleaned_with_counts(tiny_cfg, tmp_path, caplog):
    rows = [{"text": "a fine row", "id": "a"}, {"text": "", "id": "b"}, {"text": "   ", "id": "c"},
            {"text": None, "id": "d"}, {"text": 42, "id": "e"}, {"text": ["a list"], "id": "f"},
            {"text": "same id again", "id": "a"}, {"text": "another fine row", "id": "g"}]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = tiny_cfg("seed=local", f"seed.path={corpus}", "seed.id_field=id")
    with caplog.at_level(logging.INFO):
        seed = load_seed(run_options(cfg).seed, 0)
    assert seed["text"] == ["a fine row", "another fine row"] and seed["id"] == ["a", "g"]
    assert "skipped 5 of 8 rows whose 'text' is blank or not text (e.g. row 1)" in caplog.text
    assert "skipped 1 rows whose 'id' repeats an earlier row's" in caplog.text


def test_corpus_with_non_utf8_bytes_is_rejected_with_a_count(tiny_cfg, tmp_path, earlier):
    corpus = tmp_path / "latin1.jsonl.gz"
    with gzip.open(corpus, "wb") as f:
        f.write(b'{"text": "plain"}\n{"text": "caf\xe9"}\n{"text": "ok"}\n{"text": "na\xefve"}\n')
    fails_cleanly(tiny_cfg("seed=local", f"seed.path={corpus}"), earlier,
                  r"has 2 line\(s\) that are not valid UTF-8 \(first: line 2\)", tmp_path)


def test_finetuned_lm_with_another_vocabulary_fails_before_any_compute(tiny_cfg, tmp_path, earlier):
    from transformers import AutoConfig, AutoModelForCausalLM

    other = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "gpt2", vocab_size=400, n_embd=16, n_layer=1, n_head=2, n_positions=64, tie_word_embeddings=False))
    other.save_pretrained(tmp_path / "other_vocab")
    cfg = tiny_cfg(*TINY_SFT, f"model.finetuned={tmp_path / 'other_vocab'}")
    fails_cleanly(cfg, earlier, r"different architectures or vocabularies: vocab_size is 300 in the base and 400",
                  tmp_path)


@pytest.mark.slow
def test_recover_cli_errors_are_one_line_and_leave_earlier_outputs(tmp_path, earlier):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "W2D_CACHE_DIR": str(tmp_path / "cache")}
    tiny = [o for o in TINY if not o.startswith("dataset.")]
    before = snapshot(earlier)
    cases = [([f"model.finetuned={tmp_path / 'missing'}"], "does not exist")]
    if not torch.cuda.is_available():
        cases.append(([f"model.finetuned={tmp_path}", "trainer=gpu"], "torch sees no CUDA GPU"))
    for extra, msg in cases:
        p = subprocess.run([sys.executable, "-m", "src.main", "mode=recover", *tiny, *extra,
                            f"hydra.run.dir={earlier}"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
        assert p.returncode == 2, p.stderr[-2000:]
        errors = [line for line in p.stderr.splitlines() if line.startswith("error:")]
        assert len(errors) == 1 and msg in errors[0] and "Traceback" not in p.stderr
    after = snapshot(earlier)  # Hydra adds its own .hydra/ and log; every earlier file is as it was
    assert all(after[path] == data for path, data in before.items())


@pytest.mark.parametrize("overrides, pattern", [
    (["checkpoints=foo"], r"checkpoints must be one of \['theta_f', 'theta_0'\], got 'foo'"),
    (["selector.method=nosuch"], r"method must be one of \['exact', 'stochastic', 'batched'\], got 'nosuch'"),
    (["selector.running_sum=both"], r"running_sum must be one of"),
    (["gradient.store_dtype=int8"], r"gradient.store_dtype must be one of"),
    (["selection.precision=half"], r"selection.precision must be one of"),
    (["seed.leak_fraction=1.5"], r"leak_fraction must be in \[0, 1\]"),
    (["task=classify_lm", "gradient.precondition=adam"], r"gradient.precondition must be one of"),
    (["task=sft", "gradient.projection=sparse"], r"gradient.projection must be one of"),
    (["task=classification", "model=smollm2"], r"model.name_or_path=gguf:.* is a causal LM: use task=classify_lm"),
])
def test_options_with_fixed_values_fail_before_any_data_or_model(tiny_cfg, tmp_path, earlier, overrides, pattern,
                                                                  monkeypatch):
    import src.stages

    def no_data(cfg):
        raise AssertionError("data was loaded before the options were checked")

    monkeypatch.setattr(src.stages, "load_data", no_data)
    fails_cleanly(tiny_cfg(*overrides), earlier, pattern, tmp_path)


def test_label_word_task_with_an_encoder_model_fails_before_theta_f(tiny_cfg, tmp_path, earlier):
    # MiniLM is a BERT encoder: loading it as a causal LM would give a fresh random head.
    fails_cleanly(tiny_cfg("task=classify_lm", "model=minilm"), earlier, r"\(BertModel\) is not a causal LM", tmp_path)
    assert not (tmp_path / "cache" / "thetaf").exists()


def test_exact_projection_bound_is_checked_in_preflight_with_the_largest_n_that_fits(tiny_cfg, tmp_path, earlier):
    from src.gradients.exact import check_bound, memory_bytes

    # Exactly at the bound passes; one row more than fits names the largest n.
    n = 1000
    check_bound(n, 4096, 192, None, available=memory_bytes(n, 4096, 192))
    with pytest.raises(UserError, match=r"at most 1000 gradients \(P·N\) fit"):
        check_bound(n + 1, 4096, 192, None, available=memory_bytes(n, 4096, 192))
    for bad in (0, -5):
        with pytest.raises(UserError, match="exact_max_rows must be a positive number of rows or null"):
            check_bound(10, 8, 8, bad)
    # In the CLI: a corpus past the memory bound, and exact on a many-token task, fail before any data.
    fails_cleanly(tiny_cfg("task=classify_lm", "model=wordnet_lm", "gradient.projection=exact", "gradient.exact_max_rows=null",
                           "seed.max_examples=10000000"), earlier, r"GiB is available: at most \d+ gradients", tmp_path)
    fails_cleanly(tiny_cfg("task=lm", "gradient.projection=exact"), earlier,
                  r"projection=exact needs one loss position per example", tmp_path)
    fails_cleanly(tiny_cfg("gradient.precondition=adafactor"), earlier,
                  r"task=classification projects its fresh head's gradients with the dense `projector`", tmp_path)
