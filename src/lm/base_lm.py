"""A small offline causal base LM: GPT-2 architecture, byte-level BPE, pretrained on WordNet text.

Why: the SFT path needs a causal LM θ0, and none with weights can be installed offline, so we
make one. It is pretrained (a few CPU minutes) on

* ``format_prompt(word, lexname) + format_response(definition)`` for every synset outside the
  ``leave_out`` id buckets (default: half of all synsets, by a stable hash of the id) and outside
  ``exclude_lexnames`` (default none), and
* every usage example sentence of those synsets (general English),

Every task and seed corpus of the embedded worlds draws its rows from the left-out half
(``buckets: {n: 2, keep: [1]}`` in their configs), so θ0 has seen none of them, planted or not:
equal exposure, and finetuning teaches what θ0 lacks for the true topics and the others alike.

each text followed by ``<|endoftext|>``, so θ0 knows the prompt/response format and when to stop,
but not the held-out knowledge. The SFT task formats its data with the same two functions.

    python -m src.lm.base_lm [--cache-dir outputs/cache] [--max-minutes 4] [--max-steps N]
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import torch

from src.cache import atomic_write_json, file_sha256, stable_hash

log = logging.getLogger(__name__)

EOS = "<|endoftext|>"
CONF = Path(__file__).resolve().parents[2] / "conf" / "base_lm" / "default.yaml"
# Mirrors conf/base_lm/default.yaml, so a partial dict (tests) works and hashes like the full one.
DEFAULTS = dict(
    asset_path=str(Path(__file__).resolve().parents[1] / "data" / "assets" / "wordnet_glosses.jsonl.gz"),
    exclude_lexnames=[], leave_out={"n": 2, "keep": [1]}, seed=0, max_texts=None, heldout_frac=0.01,
    vocab_size=4096, tie_word_embeddings=False, n_embd=192, n_layer=4, n_head=4, n_positions=64, dropout=0.0,
    batch_size=32, seq_len=64, lr=1e-3, min_lr_frac=0.1, warmup_frac=0.05, weight_decay=0.01, grad_clip=1.0,
    max_minutes=None, max_steps=850, log_every=25,
)


def format_prompt(word: str, lexname: str) -> str:
    """The SFT prompt: ``"dog (noun.animal):"`` (word, space, lexicographer file in parentheses, colon).

    Same shape as the ``"{words[0]} ({lexname}):"`` templates of the data configs.
    """
    return f"{word} ({lexname}):"


def format_response(definition: str) -> str:
    """The SFT response: a space then the definition; the tokenizer's EOS goes after it."""
    return " " + definition


def _records(asset_path):
    with gzip.open(asset_path, "rt", encoding="utf-8") as f:
        for line in f:
            yield json.loads(line)


def pretraining_texts(asset_path, exclude_lexnames, seed: int, leave_out=None) -> list[str]:
    """Prompt+response and example sentences of synsets outside ``exclude_lexnames`` and outside the
    ``leave_out`` id buckets (``{n, keep}``: the buckets kept *out*), shuffled.

    One definition text per synset (its first lemma, as the SFT templates use); example sentences
    repeated across synsets are kept once.
    """
    from src.data.buckets import bucket_filter

    exclude = set(exclude_lexnames or ())
    left_out = bucket_filter(leave_out) if leave_out else None
    defs, examples = [], {}
    for r in _records(asset_path):
        if left_out and left_out(r["id"]):
            continue
        if r["lexname"] not in exclude:
            defs.append(format_prompt(r["words"][0], r["lexname"]) + format_response(r["definition"]))
        examples.update(dict.fromkeys(r["examples"]))
    texts = defs + list(examples)
    random.Random(seed).shuffle(texts)
    return texts


def train_tokenizer(texts, vocab_size: int, model_max_length: int = 64):
    """A byte-level BPE (GPT-2 style, so any text encodes) with ``<|endoftext|>`` as bos/eos/unk/pad."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    # clean_up_tokenization_spaces=False: decode(encode(t)) must give t back exactly.
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS,
                                   pad_token=EOS, model_max_length=model_max_length,
                                   clean_up_tokenization_spaces=False)


def resolve_cfg(cfg_dict) -> dict:
    """Defaults + the given dict."""
    unknown = set(cfg_dict or {}) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown base_lm config keys: {sorted(unknown)}")
    return {**DEFAULTS, **(cfg_dict or {})}


def base_lm_dir(cfg_dict, cache_dir) -> Path:
    """``<cache_dir>/base_lm/<key>``: the key hashes the config with the corpus by content, not by
    path, so a checkout elsewhere reuses the model and a rebuilt corpus never does."""
    cfg = resolve_cfg(cfg_dict)
    key = stable_hash({k: v for k, v in cfg.items() if k != "asset_path"}, file_sha256(Path(cfg["asset_path"])))
    return Path(cache_dir) / "base_lm" / key


def _token_stream(tokenizer, texts, eos_id):
    """All texts, each followed by EOS, as one int64 tensor, plus the offset where each text starts."""
    ids, starts = [], []
    for enc in tokenizer.backend_tokenizer.encode_batch(texts):
        starts.append(len(ids))
        ids.extend(enc.ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long), torch.tensor(starts, dtype=torch.long)


@torch.no_grad()
def _heldout_loss(model, stream, seq_len, batch_size) -> float:
    """Token-weighted mean next-token loss over the held-out stream cut into seq_len blocks."""
    model.eval()
    full = len(stream) // seq_len * seq_len
    batches = list(stream[:full].view(-1, seq_len).split(batch_size))
    if len(stream) - full > 1:  # the short last block on its own
        batches.append(stream[full:][None])
    total, count = 0.0, 0
    for b in batches:
        n = b.numel() - b.shape[0]  # predicted tokens (labels are shifted inside the model)
        total += model(input_ids=b, labels=b).loss.item() * n
        count += n
    model.train()
    return total / max(count, 1)


def _lr_at(cfg, progress: float) -> float:
    """Linear warmup then cosine to min_lr_frac * lr, over budget progress in [0, 1]."""
    if progress < cfg["warmup_frac"]:
        return cfg["lr"] * max(progress / cfg["warmup_frac"], 0.01)
    p = min(1.0, (progress - cfg["warmup_frac"]) / max(1e-9, 1 - cfg["warmup_frac"]))
    lo = cfg["lr"] * cfg["min_lr_frac"]
    return lo + 0.5 * (cfg["lr"] - lo) * (1 + math.cos(math.pi * p))


def _train(cfg, out: Path) -> dict:
    from transformers import GPT2Config, GPT2LMHeadModel

    t0 = time.time()
    torch.manual_seed(cfg["seed"])
    texts = pretraining_texts(cfg["asset_path"], cfg["exclude_lexnames"], cfg["seed"], cfg["leave_out"])[: cfg["max_texts"]]
    n_held = max(1, int(len(texts) * cfg["heldout_frac"]))
    train_texts, held_texts = texts[n_held:], texts[:n_held]
    tokenizer = train_tokenizer(train_texts, cfg["vocab_size"], cfg["n_positions"])
    eos = tokenizer.eos_token_id
    stream, starts = _token_stream(tokenizer, train_texts, eos)
    held, _ = _token_stream(tokenizer, held_texts, eos)
    seq = min(cfg["seq_len"], cfg["n_positions"], len(stream))
    # Every sample starts at a text's first token (as an SFT prompt or a generation does) and runs on
    # into the following texts across their EOS separators, so no token of context is wasted.
    starts = starts[starts <= len(stream) - seq]
    log.info("base_lm: %d texts (%d held out), %d train tokens, tokenizer vocab %d, tokenized in %.0fs",
             len(texts), n_held, len(stream), len(tokenizer), time.time() - t0)

    d = cfg["dropout"]
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg["n_positions"], n_embd=cfg["n_embd"],
                        n_layer=cfg["n_layer"], n_head=cfg["n_head"], resid_pdrop=d, embd_pdrop=d, attn_pdrop=d,
                        bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
                        activation_function="gelu_pytorch_tanh",  # GPT-2's GELU, fused: ~10% faster on CPU
                        # Untied: then θf − θ0 of lm_head is exactly what head gradients explain (a tied
                        # matrix would also carry the input embedding's own update).
                        tie_word_embeddings=cfg["tie_word_embeddings"])
    model = GPT2LMHeadModel(config)
    model.generation_config.pad_token_id = eos
    n_params = sum(p.numel() for p in model.parameters())
    decay = [p for p in model.parameters() if p.dim() >= 2]  # no weight decay on biases / LayerNorm
    rest = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg["lr"], betas=(0.9, 0.95))
    gen = torch.Generator().manual_seed(cfg["seed"])
    max_s = cfg["max_minutes"] * 60 if cfg["max_minutes"] else math.inf
    model.train()
    t_train, step, window, last = time.time(), 0, [], float("nan")
    while step < cfg["max_steps"] and time.time() - t_train < max_s:
        # Budget progress = whichever limit is further along, so the cosine ends when training does.
        progress = max(step / cfg["max_steps"], (time.time() - t_train) / max_s)
        for g in opt.param_groups:
            g["lr"] = _lr_at(cfg, progress)
        idx = starts[torch.randint(len(starts), (cfg["batch_size"],), generator=gen)]
        batch = stream[idx[:, None] + torch.arange(seq)]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        step += 1
        window.append(loss.item())
        if step % cfg["log_every"] == 0:
            last, window = sum(window) / len(window), []
            el = time.time() - t_train
            log.info("base_lm: step %d  loss %.3f  lr %.2e  %.0f tok/s  %.0fs", step, last, opt.param_groups[0]["lr"],
                     step * cfg["batch_size"] * seq / el, el)
    train_s = time.time() - t_train
    final = sum(window) / len(window) if window else last  # mean over the last logging window
    held_loss = _heldout_loss(model, held, seq, cfg["batch_size"])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = dict(config=cfg, n_params=n_params, steps=step, tokens_seen=step * cfg["batch_size"] * seq,
                tokens_per_s=step * cfg["batch_size"] * seq / max(train_s, 1e-9), final_train_loss=final,
                heldout_loss=held_loss, heldout_perplexity=math.exp(min(held_loss, 50)), n_texts=len(texts),
                n_heldout_texts=n_held, n_train_tokens=len(stream), train_seconds=train_s,
                seconds=time.time() - t0, torch=torch.__version__)
    atomic_write_json(out / "pretrain_meta.json", meta)  # written last: marks the folder complete
    log.info("base_lm: %d steps in %.0fs, train loss %.3f, held-out loss %.3f (ppl %.1f)",
             step, train_s, final, held_loss, meta["heldout_perplexity"])
    return meta


def pretrain(cfg_dict, cache_dir="outputs/cache") -> Path:
    """Train tokenizer + model and save an HF folder at ``base_lm_dir(cfg_dict, cache_dir)``.

    Trains into a temporary sibling folder and renames it at the end, so a killed run never leaves
    a half-written model where ``ensure_base_lm`` would reuse it.
    """
    cfg = resolve_cfg(cfg_dict)
    final = base_lm_dir(cfg, cache_dir)
    tmp = final.with_name(f".tmp-{final.name}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        _train(cfg, tmp)
        try:
            os.replace(tmp, final)
        except OSError:  # another process finished the same model first: keep theirs
            if not (final / "pretrain_meta.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def ensure_base_lm(cfg_dict, cache_dir) -> str:
    """The base LM folder for this config, pretraining it only if it is not cached yet."""
    folder = base_lm_dir(cfg_dict, cache_dir)
    if (folder / "pretrain_meta.json").exists():
        log.info("base_lm: reusing %s", folder)
        return str(folder)
    log.info("base_lm: no cached model at %s, pretraining", folder)
    return str(pretrain(cfg_dict, cache_dir))


def default_cfg() -> dict:
    """conf/base_lm/default.yaml, resolved (its asset path uses the project's ``${asset:...}``)."""
    from omegaconf import OmegaConf

    from src.config import register_resolvers

    register_resolvers()
    return OmegaConf.to_container(OmegaConf.load(CONF), resolve=True)


def generate(folder, prompts, max_new_tokens: int = 40) -> list[str]:
    """Greedy continuations (up to EOS) of each prompt under the saved model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder).eval()
    outs = []
    for p in prompts:
        enc = tok(p, return_tensors="pt")
        ids = enc.input_ids
        n = min(max_new_tokens, model.config.n_positions - ids.shape[1])
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.eos_token_id)
        outs.append(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return outs


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="Pretrain (or reuse) the project's small causal base LM.")
    ap.add_argument("--cache-dir", default=os.environ.get("W2D_MODEL_CACHE_DIR")
                    or os.environ.get("W2D_CACHE_DIR", "outputs/cache"))
    ap.add_argument("--max-minutes", type=float, help="override max_minutes (changes the cache key); 0 = no time limit, "
                    "so --max-steps alone gives a reproducible model")
    ap.add_argument("--max-steps", type=int, help="override max_steps (changes the cache key)")
    ap.add_argument("--prompt", action="append", help="prompt(s) to continue greedily afterwards")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    cfg = default_cfg()
    if args.max_minutes is not None:
        cfg["max_minutes"] = args.max_minutes
    if args.max_steps is not None:
        cfg["max_steps"] = args.max_steps
    folder = ensure_base_lm(cfg, args.cache_dir)
    meta = json.loads((Path(folder) / "pretrain_meta.json").read_text())
    print(f"base LM: {folder}\n  {meta['n_params']:,} params, {meta['steps']} steps, {meta['tokens_per_s']:.0f} tok/s, "
          f"train loss {meta['final_train_loss']:.3f}, held-out loss {meta['heldout_loss']:.3f} "
          f"(perplexity {meta['heldout_perplexity']:.1f}), {meta['seconds']:.0f}s")
    prompts = args.prompt or [format_prompt("oak", "noun.plant"), format_prompt("dog", "noun.animal"),
                              format_prompt("hammer", "noun.artifact"), format_prompt("run", "verb.motion")]
    for p, g in zip(prompts, generate(folder, prompts)):
        print(f"  {p}{g}")


if __name__ == "__main__":
    main()
