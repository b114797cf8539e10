"""Evaluation metrics that are plain math: sentence embeddings and optimal-transport distance.

OT distance between two text sets = the earth mover's distance between the uniform
distributions over their embeddings (POT), cost = squared Euclidean distance of
L2-normalised embeddings (= 2 − 2·cosine). Exact EMD by default; entropic Sinkhorn
for large sets where the O(n³) exact solver is too slow.
"""
from __future__ import annotations

import numpy as np
import ot
import torch

from src.errors import UserError


def ot_distance(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor, method: str = "emd",
                reg: float = 0.1, metric: str = "sqeuclidean") -> float:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) == 0 or len(y) == 0:
        raise UserError("OT distance needs two non-empty sets")
    a, b = ot.unif(len(x)), ot.unif(len(y))
    cost = ot.dist(x, y, metric=metric)
    if method == "emd":
        return float(ot.emd2(a, b, cost, numItermax=1_000_000))
    if method == "sinkhorn":
        return float(ot.sinkhorn2(a, b, cost, reg))
    raise UserError(f"unknown OT method '{method}' (use emd or sinkhorn)")


def mean_pool(last_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(last_hidden.dtype)
    return (last_hidden * m).sum(1) / m.sum(1).clamp_min(1.0)


class Embedder:
    """Mean-pooled, L2-normalised sentence embeddings from any ``AutoModel`` (default: packaged MiniLM)."""

    def __init__(self, name_or_path: str, batch_size: int = 128, max_length: int = 128, device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        from src.models import _from_hub, resolve_path

        self.tok = _from_hub(AutoTokenizer.from_pretrained, name_or_path)
        self.model = _from_hub(AutoModel.from_pretrained, name_or_path).to(device).eval()
        self.batch_size, self.max_length, self.device = batch_size, max_length, device
        self.name = resolve_path(name_or_path)

    @torch.no_grad()
    def __call__(self, texts: list[str]) -> np.ndarray:
        out = []
        for i in range(0, len(texts), self.batch_size):
            enc = self.tok(texts[i:i + self.batch_size], padding=True, truncation=True,
                           max_length=self.max_length, return_tensors="pt").to(self.device)
            h = self.model(**enc).last_hidden_state
            out.append(torch.nn.functional.normalize(mean_pool(h, enc["attention_mask"]), dim=-1).cpu())
        return torch.cat(out).numpy() if out else np.zeros((0, 1))
