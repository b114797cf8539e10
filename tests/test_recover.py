"""mode=recover: θf given as a folder or a LoRA adapter, no true data, the selection read back as a dataset,
and the same picks as an experiment on the same θ0 / θf / seed corpus."""
import datasets
import pytest
import torch

from src.config import run_options
from src.config import compose_config
from src.errors import UserError
from src.pipeline import run
from src.stages import load_models, load_task_data
from tests.conftest import TINY
from tests.test_sft import TINY_SFT

pytestmark = pytest.mark.slow

# The tiny overrides without the true data's: a recover run has no `dataset` to shrink.
TINY_RECOVER = ["mode=recover", *(o for o in TINY if not o.startswith("dataset."))]
SFT_RECOVER = ["task=sft", "model=wordnet_lm", "seed=wordnet_prompts",
               *(o for o in TINY_SFT if o.startswith(("base_lm.", "generation.")))]


def recover_cfg(tmp_path, *overrides):
    return compose_config([*TINY_RECOVER, f"cache_dir={tmp_path / 'cache'}", *overrides])


def read_selection(run_dir, name, fmt="parquet"):
    ext = "jsonl" if fmt == "json" else fmt
    return datasets.load_dataset(fmt, data_files=str(run_dir / "selections" / name / f"selection.{ext}"), split="train")


def test_recover_from_a_model_folder_picks_what_the_experiment_picks(tiny_cfg, tmp_path):
    cfg = tiny_cfg("seed.exclude_true=false", "baselines=[topk,expert]")
    exp = run(cfg, tmp_path / "exp")
    opts = run_options(cfg)
    pair = load_models(opts, *load_task_data(opts))  # the experiment's θf, from the cache
    pair.load(1.0).save_pretrained(tmp_path / "thetaf")

    rec = run(recover_cfg(tmp_path, f"model.finetuned={tmp_path / 'thetaf'}", "seed.exclude_true=false",
                          "baselines=[topk]"), tmp_path / "rec")
    assert rec["mode"] == "recover" and "reference" not in rec  # nothing to score against
    assert [r["selector"] for r in rec["results"]] == ["select", "topk"]
    for name in ("select", "topk"):
        got, want = read_selection(tmp_path / "rec", name), read_selection(tmp_path / "exp", name)
        assert got["row"] == want["row"] and got["id"] == want["id"] and got["label"] == want["label"]
        assert got["rank"] == list(range(1, 9)) and len(set(got["row"])) == 8
        torch.testing.assert_close(torch.tensor(got["alignment"]), torch.tensor(want["alignment"]))
        assert read_selection(tmp_path / "rec", name, "json")["row"] == got["row"]  # jsonl: the same rows
    # The objective column is what SELECT's greedy step maximised, pick by pick.
    sel = read_selection(tmp_path / "rec", "select")
    info = rec["results"][0]
    assert sel["objective"][0] == pytest.approx(info["objective_first"], abs=1e-5)
    assert sel["objective"][-1] == pytest.approx(info["objective_last"], abs=1e-5)
    # Every seed row's alignment; a pick's own alignment is its row's; top-k takes the highest.
    scores = datasets.load_dataset("parquet", data_files=str(tmp_path / "rec" / "scores.parquet"), split="train")
    assert len(scores) == 60 and scores["row"] == list(range(60))
    assert [scores["alignment"][i] for i in sel["row"]] == pytest.approx(sel["alignment"])
    topk = read_selection(tmp_path / "rec", "topk")
    assert min(topk["alignment"]) >= sorted(scores["alignment"])[-8] - 1e-7
    # The experiment's expert picks come from the true data and carry no seed scores.
    expert = read_selection(tmp_path / "exp", "expert")
    assert set(expert["source"]) == {"true"} and set(expert["objective"]) == {None}
    assert exp["results"][0]["selector"] == "select"


def test_recover_with_a_dataset_also_evaluates(tmp_path, tiny_cfg):
    cfg = run_options(tiny_cfg("baselines=[]"))
    pair = load_models(cfg, *load_task_data(cfg))
    pair.load(1.0).save_pretrained(tmp_path / "thetaf")
    res = run(recover_cfg(tmp_path, f"model.finetuned={tmp_path / 'thetaf'}", "dataset=wordnet_topics",
                          "dataset.n_train=40", "dataset.n_test=24"), tmp_path / "rec")
    assert 0.0 <= res["results"][0]["accuracy"] <= 1.0 and "thetaf_accuracy" in res["reference"]
    assert len(read_selection(tmp_path / "rec", "select")) == 8


def _lora(model, targets, path, seed=0):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)  # init_lora_weights=False: B is random too, so the adapter really changes θ
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False))
    peft.save_pretrained(path)
    return peft


def test_recover_from_a_lora_adapter_of_the_embedded_lm(tiny_cfg, tmp_path):
    cfg = run_options(tiny_cfg(*TINY_SFT, "seed.exclude_true=false", "baselines=[topk]"))
    data, task = load_task_data(cfg)
    model, _ = task.build_base(data.task)  # θ0: the (tiny) embedded LM
    peft = _lora(model, ["lm_head"], tmp_path / "adapter")
    peft.merge_and_unload().save_pretrained(tmp_path / "merged")  # the same θf as a full folder

    exp = run(tiny_cfg(*TINY_SFT, "seed.exclude_true=false", "baselines=[topk]",
                       f"model.finetuned={tmp_path / 'merged'}"), tmp_path / "exp")
    rec = run(recover_cfg(tmp_path, *SFT_RECOVER, "seed.exclude_true=false", "baselines=[topk]", f"model.finetuned={tmp_path / 'adapter'}"),
              tmp_path / "rec")
    assert exp["results"][0]["perplexity"] > 1 and rec["task"] == "sft"
    for name in ("select", "topk"):
        got, want = read_selection(tmp_path / "rec", name), read_selection(tmp_path / "exp", name)
        assert got["row"] == want["row"] and got["response"] == want["response"] and got["prompt"] == want["prompt"]
        assert {"group", "objective", "alignment", "logp_f"} <= set(got.column_names)


def test_adapter_that_leaves_the_last_layer_unchanged_fails_at_once(tiny_cfg, tmp_path):
    cfg = run_options(tiny_cfg(*TINY_SFT))
    data, task = load_task_data(cfg)
    model, _ = task.build_base(data.task)
    _lora(model, ["c_attn"], tmp_path / "attn_only")  # attention only: the LM head is untouched
    out = tmp_path / "rec"
    with pytest.raises(UserError) as e:
        run(recover_cfg(tmp_path, *SFT_RECOVER, f"model.finetuned={tmp_path / 'attn_only'}"), out)
    msg = str(e.value)
    assert "\n" not in msg and "leaves the last layer 'lm_head' unchanged" in msg and "target_modules" in msg
    assert not out.exists() and not (tmp_path / "cache" / "autolabel").exists()


def test_an_attention_only_adapter_is_read_by_whole_model_gradients(tiny_cfg, tmp_path):
    # The head is untouched, so only selectors that read every layer have a target; they run, and pick the
    # same rows from the adapter as from the same θf merged into a folder.
    cfg = run_options(tiny_cfg(*TINY_SFT))
    data, task = load_task_data(cfg)
    model, _ = task.build_base(data.task)
    peft = _lora(model, ["c_attn"], tmp_path / "attn_only")
    peft.merge_and_unload().save_pretrained(tmp_path / "merged")
    picks = {}
    for name in ("attn_only", "merged"):
        res = run(recover_cfg(tmp_path, *SFT_RECOVER, "selector=select_layers", "gradient.layer_d=8",
                              f"model.finetuned={tmp_path / name}"), tmp_path / f"rec_{name}")
        assert [r["selector"] for r in res["results"]] == ["select_layers"]
        picks[name] = read_selection(tmp_path / f"rec_{name}", "select_layers")["row"]
    assert len(picks["attn_only"]) == 8 and picks["attn_only"] == picks["merged"]
    with pytest.raises(UserError, match=r"would be zero for select;.*selector=select_layers"):  # the head reader
        run(recover_cfg(tmp_path, *SFT_RECOVER, "selector=select_layers", "baselines=[select]",
                        f"model.finetuned={tmp_path / 'attn_only'}"), tmp_path / "mixed")


def test_recover_needs_theta_f_and_no_true_data_selectors(tmp_path):
    with pytest.raises(UserError, match="mode=recover needs θf: set model.finetuned"):
        run(recover_cfg(tmp_path), tmp_path / "a")
    with pytest.raises(UserError, match=r"selector\(s\) \['expert'\] pick from the true data"):
        run(recover_cfg(tmp_path, f"model.finetuned={tmp_path}", "baselines=[expert]"), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_recover_from_the_command_line(tiny_cfg, tmp_path):
    import json
    import os
    import subprocess
    import sys

    from tests.conftest import ROOT

    cfg = run_options(tiny_cfg())
    load_models(cfg, *load_task_data(cfg)).load(1.0).save_pretrained(tmp_path / "thetaf")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "W2D_CACHE_DIR": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "src.main", *TINY_RECOVER, f"model.finetuned={tmp_path / 'thetaf'}",
                        "baselines=[random]", f"hydra.run.dir={tmp_path / 'run'}"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "weights2data recover (classification)" in p.stdout and "selection.parquet" in p.stdout
    res = json.loads((tmp_path / "run" / "results.json").read_text())
    assert res["mode"] == "recover" and [r["selector"] for r in res["results"]] == ["select", "random"]
    assert len(read_selection(tmp_path / "run", "random")) == 8
