"""Python API: recover the data behind a finetuned model from a notebook or script, no command line.

    from src.api import recover
    picks = recover("gpt2", "path/to/finetuned-or-adapter", "corpus.jsonl", k=1000, task="sft",
                    prompt_field="prompt")
    picks.to_pandas().head()       # rank, row, id, prompt, response, objective, alignment, ...

``recover`` turns its arguments into the same Hydra config ``python -m src.main mode=recover ...``
composes (conf/, overrides built here) and calls the same ``src.pipeline.run``; the returned
``datasets.Dataset`` is the main selector's ``selection.parquet`` as written to ``out_dir``
(columns: see ``src.selection_io``). ``model_path`` gives the folder of a named base model (e.g.
the embedded ``wordnet_lm``, pretrained on first use) for finetuning it yourself.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from src.config import CONF_DIR, compose_config, quiet_libraries

# Extra Hydra overrides appended to every call (tests shrink the embedded models with it).
EXTRA_OVERRIDES: list[str] = []


def _q(value) -> str:
    """A value quoted for Hydra's override grammar (paths, templates with braces, spaces)."""
    return "'" + str(value).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _compose(overrides: list[str]):
    """The config this API runs: the overrides built here, then ``EXTRA_OVERRIDES``."""
    return compose_config([*overrides, *EXTRA_OVERRIDES])


def _model_overrides(base: str) -> list[str]:
    """A name in conf/model (``wordnet_lm``, ``gpt2``, ...) selects that config; anything else is a path or hub id."""
    if (CONF_DIR / "model" / f"{base}.yaml").is_file():
        return [f"model={base}"]
    return [f"model.name_or_path={_q(base)}"]


def model_path(base: str = "wordnet_lm", task: str = "sft", cache_dir: str | None = None) -> str:
    """The local folder (or hub id) of a base model config, building the embedded LM (or converting a
    packaged GGUF file) if it is not cached."""
    from src.config import to_plain
    from src.lm.base_lm import ensure_base_lm
    from src.models import resolve_path

    cfg = _compose([f"task={task}", *_model_overrides(base), *([f"cache_dir={_q(cache_dir)}"] if cache_dir else [])])
    if cfg.model.name_or_path == "base_lm":  # the embedded LM: a folder in model_cache_dir, pretrained once
        return ensure_base_lm(to_plain(cfg.base_lm), cfg.model_cache_dir)
    if str(cfg.model.name_or_path).startswith("gguf:"):  # a packaged GGUF file (smollm2), converted once
        from src.lm.gguf import ensure_gguf_model

        return ensure_gguf_model(str(cfg.model.name_or_path), cfg.model_cache_dir)
    return resolve_path(str(cfg.model.name_or_path))


def _corpus_overrides(corpus, text_field, prompt_field, id_field, out_dir: Path) -> list[str]:
    if corpus is None:  # the task's own default seed corpus (embedded WordNet)
        return []
    if not isinstance(corpus, (str, Path)):  # a datasets.Dataset or a list of texts: saved next to the outputs
        import datasets

        ds = corpus if isinstance(corpus, datasets.Dataset) else datasets.Dataset.from_dict({text_field: list(corpus)})
        out_dir.mkdir(parents=True, exist_ok=True)
        corpus = out_dir / "corpus.jsonl"
        ds.to_json(str(corpus), lines=True, force_ascii=False)
    o = ["seed=local", f"seed.path={_q(Path(corpus).expanduser().resolve())}", f"seed.text_field={_q(text_field)}"]
    if prompt_field:  # prompts for a causal LM to answer (task=sft): rendered by the seed's template
        o.append(f"seed.prompt_template={_q('{' + prompt_field + '}')}")
    if id_field:
        o.append(f"seed.id_field={_q(id_field)}")
    return o


def recover(base: str, finetuned: str, corpus=None, k: int = 100, *, task: str = "classification", d: int = 4096,
            P: int = 1, selector: str | None = None, baselines=(), head: str | None = None, device: str = "cpu",
            text_field: str = "text", prompt_field: str | None = None, id_field: str | None = None,
            max_examples: int | None = None, classes=None, out_dir: str | None = None,
            cache_dir: str | None = None, overrides=()):
    """Pick the ``k`` corpus examples whose gradients best explain θf − θ0; return them as a Dataset.

    base: θ0, a conf/model name (``wordnet_lm``, ``minilm``, ``gpt2``) or a model folder / hub id.
    finetuned: θf, a model folder, hub id, or PEFT/LoRA adapter folder (merged onto ``base``).
    corpus: a .jsonl/.csv/.parquet path, a ``datasets.Dataset``, a list of texts, or None for the
    task's embedded seed corpus. ``selector``: a conf/selector name; None takes the task's default, as the
    command line does (``select`` for classification, ``select_balanced`` for ``classify_lm``,
    ``select_layers`` for ``lm``). ``prompt_field`` names the prompt column for ``task="sft"``.
    device: "cpu" or "gpu". ``overrides``: any further Hydra overrides, e.g. ``["dataset=ag_news"]`` to
    also retrain and score each selection on true data. Files go to ``out_dir`` (default
    outputs/recover/<time>): selections/<selector>/selection.{parquet,jsonl}, scores.parquet, results.json.
    """
    import datasets

    from src.pipeline import run

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    quiet_libraries()
    out = Path(out_dir or Path("outputs") / "recover" / time.strftime("%Y-%m-%d_%H-%M-%S"))
    o = [f"task={task}", "mode=recover", "logger=none", *_model_overrides(base),
         f"model.finetuned={_q(Path(finetuned).expanduser().resolve() if Path(finetuned).expanduser().exists() else finetuned)}",
         f"k={int(k)}", f"d={int(d)}", f"P={int(P)}", *([f"selector={selector}"] if selector else []),
         f"baselines=[{','.join(baselines)}]", f"trainer={'gpu' if device in ('gpu', 'cuda') else 'cpu'}",
         *_corpus_overrides(corpus, text_field, prompt_field, id_field, out)]
    if head:
        o.append(f"model.head={_q(head)}")
    if max_examples is not None:
        o.append(f"seed.max_examples={int(max_examples)}")
    if classes:
        o.append(f"classes=[{','.join(_q(c) for c in classes)}]")
    if cache_dir:
        o.append(f"cache_dir={_q(cache_dir)}")
    cfg = _compose([*o, *overrides])
    res = run(cfg, out)
    (out / "results.json").write_text(json.dumps(res, indent=2))
    sel = out / "selections" / res["results"][0]["selector"] / "selection.parquet"
    return datasets.load_dataset("parquet", data_files=str(sel), split="train")
