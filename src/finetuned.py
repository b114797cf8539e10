"""θf given by the user: a model folder, a hub id, or a PEFT/LoRA adapter folder merged onto θ0.

Checked before anything expensive runs (``check_finetuned``): a local-looking path that does not
exist, and an adapter that never touches the chosen last layer when a selector reads that layer alone,
each fail with one line. An adapter is merged onto a copy of θ0 (``merge_adapter``), so θf − θ0 is
exactly the adapter's update and the rest of the pipeline sees plain state dicts.
"""
from __future__ import annotations

import copy
import json
import logging
import os
import re
from pathlib import Path

import torch

from src.errors import UserError

log = logging.getLogger(__name__)

ADAPTER_CONFIG = "adapter_config.json"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "gpt2" or "org/name"


def is_adapter(path: str) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def check_exists(name: str, what: str) -> None:
    """A name that can only be a local path (absolute, ./, ~, or not a valid hub id) must exist.

    Without this, transformers answers a missing folder with advice about hub repo-id syntax.
    """
    if name.startswith("gguf:"):  # a file in an installed package: say so now if it is not there
        from src.lm.gguf import gguf_file

        gguf_file(name)
        return
    if not name or name.startswith(("pkg:", "random:")) or name == "base_lm":
        return
    p = Path(name).expanduser()
    if p.exists():
        return
    looks_local = p.is_absolute() or name.startswith((".", "~")) or not _HUB_ID.match(name)
    if looks_local:
        raise UserError(f"{what}: path {name} does not exist")
    # "outputs/thetaf" could be a hub id "org/name"; offline, only the HF cache can hold one.
    if "/" in name and _offline() and not _in_hub_cache(name):
        raise UserError(f"{what}: path {name} does not exist (and it is no hub model in the offline HF cache)")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _in_hub_cache(repo_id: str) -> bool:
    from huggingface_hub import try_to_load_from_cache

    try:
        return any(isinstance(try_to_load_from_cache(repo_id, f), str) for f in ("config.json", ADAPTER_CONFIG))
    except ValueError:  # not a valid repo id
        return False


def _adapter_touches(cfg: dict, head: str) -> bool:
    """Whether a PEFT config trains ``head``: in ``modules_to_save`` or matched by ``target_modules``."""
    def matches(pattern_or_list) -> bool:
        if not pattern_or_list:
            return False
        if isinstance(pattern_or_list, str):  # PEFT treats a string as a full-match regex
            return re.fullmatch(pattern_or_list, head) is not None
        return any(head == m or head.endswith(f".{m}") or m.endswith(f".{head}") for m in pattern_or_list)

    return matches(cfg.get("modules_to_save")) or matches(cfg.get("target_modules"))


def check_finetuned(name: str | None, head: str, head_readers: list[str]) -> None:
    """Fail at once on a missing θf path, or an adapter that leaves the last layer ``head`` unchanged when
    some selector reads that layer's gradients (``head_readers``; whole-model gradients read the others)."""
    if not name:
        return
    check_exists(name, "model.finetuned")
    if not is_adapter(name) or not head_readers:
        return
    acfg = json.loads((Path(name) / ADAPTER_CONFIG).read_text())
    if not _adapter_touches(acfg, head):
        targets = acfg.get("target_modules")
        raise UserError(
            f"the adapter at {name} leaves the last layer '{head}' unchanged (it adapts {targets}, "
            f"modules_to_save={acfg.get('modules_to_save')}), so the target −(θf − θ0) on '{head}' would be zero "
            f"for {', '.join(head_readers)}; train the adapter with '{head}' in target_modules or modules_to_save, "
            f"set model.head to a layer it adapts, or select on the layers it adapts (selector=select_layers)")


def merge_adapter(base: torch.nn.Module, path: str) -> dict:
    """θf = θ0 + the adapter's update: a state dict with exactly θ0's parameter names."""
    try:
        from peft import PeftModel
    except ImportError as e:
        raise UserError("model.finetuned is a PEFT adapter folder; install peft (pip install peft)") from e
    acfg = json.loads((Path(path) / ADAPTER_CONFIG).read_text())
    log.info("models: merging the %s adapter at %s onto θ0 (its own base: %s)", acfg.get("peft_type"), path,
             acfg.get("base_model_name_or_path"))
    try:
        merged = PeftModel.from_pretrained(copy.deepcopy(base), path).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:  # shape mismatch / unknown modules: another base
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise UserError(f"could not merge the adapter at {path} onto the base model ({first}); "
                        "was it trained on a model of this architecture?") from e
    return {k: v.detach().clone() for k, v in merged.state_dict().items()}


def check_head_changed(state0: dict, statef: dict, head: str, name: str) -> None:
    """A last layer identical in θ0 and θf gives a zero target: selecting on it would be noise."""
    keys = [k for k in (f"{head}.weight", f"{head}.bias") if k in state0]
    if keys and all(torch.equal(state0[k], statef[k]) for k in keys):
        raise UserError(f"θf ({name}) is identical to θ0 on the last layer '{head}', so the target −(θf − θ0) is "
                        f"zero; pass a model finetuned with '{head}' trainable, or set model.head to a layer that changed")


def classes_without_data(classes, finetuned: str | None) -> list[str]:
    """The class names when there is no true data: ``classes`` if given, else the id2label of a θf with a
    sequence-classification head.

    Tasks without classes (SFT, LM) ignore them. A causal LM's config carries a placeholder id2label
    (LABEL_0, LABEL_1) that names no real classes, and a PEFT adapter folder has no config.json of
    its own: label-word classification and adapters take their classes from ``classes``.
    """
    if classes:
        return [str(c) for c in classes]
    path = Path(str(finetuned)) / "config.json"
    if finetuned and not is_adapter(str(finetuned)) and path.is_file():
        config = json.loads(path.read_text())
        if any("SequenceClassification" in a for a in config.get("architectures") or []):
            id2label = config.get("id2label") or {}
            return [str(id2label[k]) for k in sorted(id2label, key=int)]
    return []
