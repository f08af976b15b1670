"""The 256-bin action tokenizer: normalized actions in [-1, 1] <-> the last 256 ids of the Llama vocabulary."""

from __future__ import annotations

import numpy as np


class ActionTokenizer:
    """Uniform bins on [min_action, max_action], mapped onto ids `vocab_size - 1` (lowest bin) down to
    `vocab_size - n_bins` (the bin that holds `max_action`), as OpenVLA does.

    `n_bins` edges make `n_bins - 1` bin centers; `np.digitize` yields 1..n_bins, so the bin holding exactly
    `max_action` has no center of its own and decodes to the last center (+0.99608 for 256 bins).
    """

    def __init__(self, tokenizer, n_bins: int = 256, min_action: float = -1.0, max_action: float = 1.0) -> None:
        self.vocab_size = int(tokenizer.vocab_size)  # 32000 for Llama-2: the added <PAD> is not counted
        if self.vocab_size <= n_bins:
            raise ValueError(f"tokenizer vocab_size {self.vocab_size} must exceed n_bins {n_bins}")
        self.n_bins = n_bins
        self.min_action, self.max_action = float(min_action), float(max_action)
        self.edges = np.linspace(min_action, max_action, n_bins)  # (n_bins,) float64
        self.centers = (self.edges[:-1] + self.edges[1:]) / 2.0  # (n_bins - 1,)

    @property
    def id_range(self) -> tuple[int, int]:
        """Inclusive (lowest, highest) action token id: (31744, 31999) for Llama-2."""
        return self.vocab_size - self.n_bins, self.vocab_size - 1

    def is_action_id(self, token_ids: np.ndarray) -> np.ndarray:
        lo, hi = self.id_range
        token_ids = np.asarray(token_ids)
        return (token_ids >= lo) & (token_ids <= hi)

    def encode(self, actions: np.ndarray) -> np.ndarray:
        """actions (..., D) float, normalized -> token ids (..., D) int64; out-of-range values are clipped."""
        clipped = np.clip(np.asarray(actions, dtype=np.float64), self.min_action, self.max_action)
        bins = np.digitize(clipped, self.edges)  # 1..n_bins
        return (self.vocab_size - bins).astype(np.int64)

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """token ids (..., D) -> bin centers (..., D) float64. Raises ValueError for a non-action id (the official
        code silently maps those to +-0.996)."""
        token_ids = np.asarray(token_ids, dtype=np.int64)
        bad = ~self.is_action_id(token_ids)
        if bad.any():
            lo, hi = self.id_range
            raise ValueError(
                f"token ids {np.unique(token_ids[bad])[:8].tolist()} are not action tokens (valid: {lo}..{hi}); "
                "restrict decoding to the action ids or check the tokenizer's vocab_size"
            )
        index = np.clip(self.vocab_size - token_ids - 1, 0, len(self.centers) - 1)
        return self.centers[index]
