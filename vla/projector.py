"""The vision-to-language projector ("fused-gelu-mlp"): patch features (B, N, 2176) -> LLM embeddings (B, N, 4096)."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """fc1 (D_v -> 4 D_v), exact GELU, fc2 (4 D_v -> D_llm), exact GELU, fc3 (D_llm -> D_llm), all with bias.

    Parameter names `fc1/fc2/fc3` are the official checkpoint's (`projector.fc1.weight`, ...).
    """

    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(vision_dim, 4 * vision_dim)
        self.act_fn1 = nn.GELU()
        self.fc2 = nn.Linear(4 * vision_dim, llm_dim)
        self.act_fn2 = nn.GELU()
        self.fc3 = nn.Linear(llm_dim, llm_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """features (B, N, D_v) -> (B, N, D_llm)."""
        return self.fc3(self.act_fn2(self.fc2(self.act_fn1(self.fc1(features)))))
