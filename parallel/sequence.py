"""Split a token sequence over the ranks of a sequence-parallel group and gather it back.

The sequence is padded at the end to a multiple of the group size; ``SequenceShard`` remembers the true
length so attention can ignore the padding and ``gather`` can strip it, which keeps the result exact.
"""
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class SequenceShard:
    """Per-forward state of one rank's slice of the token sequence."""

    group: dist.ProcessGroup
    total: int | None = None          # true token count of the current forward, None between forwards
    seen_block_tokens: set = field(default_factory=set)   # local lengths blocks ran on (proof of the split)
    attention_calls: int = 0                              # Ulysses exchanges run (proof attention used them)

    def reset_stats(self) -> None:
        self.seen_block_tokens.clear()
        self.attention_calls = 0

    def stats(self) -> dict:
        return {"block_tokens": sorted(self.seen_block_tokens), "attention_calls": self.attention_calls}

    @property
    def size(self) -> int:
        return dist.get_world_size(self.group)

    @property
    def rank(self) -> int:
        return dist.get_rank(self.group)

    @property
    def local(self) -> int:
        return -(-self.total // self.size)

    @property
    def padded(self) -> int:
        return self.local * self.size

    def split(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """This rank's slice of a full-length tensor (padded with zeros past the end)."""
        if x.shape[dim] != self.total:
            raise ValueError(f"expected {self.total} tokens on dim {dim}, got {tuple(x.shape)}")
        pad = self.padded - self.total
        if pad:
            widths = [0, 0] * (x.ndim - 1 - dim % x.ndim) + [0, pad]
            x = F.pad(x, widths)
        return x.narrow(dim, self.rank * self.local, self.local)

    def split_prefix(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor | None:
        """This rank's part of a tensor that covers only the first ``x.shape[dim]`` tokens (a residual that a model
        adds to ``tokens[:, :n]``): the rows inside this rank's slice, which are again a prefix of that slice, or
        None where the tensor ends before the slice begins."""
        if x.shape[dim] > self.total:
            raise ValueError(f"expected at most {self.total} tokens on dim {dim}, got {tuple(x.shape)}")
        start = self.rank * self.local
        count = min(x.shape[dim] - start, self.local)
        return x.narrow(dim, start, count) if count > 0 else None

    def gather(self, x: torch.Tensor, dim: int = 1) -> torch.Tensor:
        """The full-length tensor from every rank's slice, padding removed."""
        parts = [torch.empty_like(x) for _ in range(self.size)]
        dist.all_gather(parts, x.contiguous(), group=self.group)
        return torch.cat(parts, dim=dim).narrow(dim, 0, self.total)
