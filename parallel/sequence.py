"""Split a token sequence over the ranks of a sequence-parallel group and gather it back.

The sequence is padded at the end to a multiple of the group size; ``SequenceShard`` remembers the true
length so attention can ignore the padding and ``gather`` can strip it, which keeps the result exact.

A group of Ulysses degree U and Ring degree R is laid out Ulysses-inside-Ring: group rank g is Ulysses rank g % U of
ring rank g // U. The U consecutive ranks of one ring rank trade heads, so after their all-to-all each holds its heads
of their U consecutive slices: ring rank j's chunk is the padded sequence's tokens [j·U·local, (j+1)·U·local).
"""
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn.functional as F


@dataclass
class SequenceShard:
    """Per-forward state of one rank's slice of the token sequence."""

    group: dist.ProcessGroup          # every rank holding a slice of the sequence (Ulysses × Ring)
    ulysses_group: dist.ProcessGroup | None = None   # ranks that trade heads; None: all of ``group`` unless a ring
    ring_group: dist.ProcessGroup | None = None      # ranks that pass K/V chunks around; None: no ring
    total: int | None = None          # true token count of the current forward, None between forwards
    seen_block_tokens: set = field(default_factory=set)   # local lengths blocks ran on (proof of the split)
    attention_calls: int = 0                              # sequence-parallel attentions run (proof they ran)

    def __post_init__(self) -> None:
        if self.ulysses_group is None and self.ring_group is None:
            self.ulysses_group = self.group

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
    def ring_size(self) -> int:
        return 1 if self.ring_group is None else dist.get_world_size(self.ring_group)

    @property
    def ring_rank(self) -> int:
        return self.rank // self.ulysses_size

    @property
    def ulysses_size(self) -> int:
        return self.size // self.ring_size

    @property
    def ulysses_rank(self) -> int:
        return self.rank % self.ulysses_size

    def chunk_valid(self, ring_rank: int) -> int:
        """Real (not padding) tokens in ring rank ``ring_rank``'s chunk; without a ring, ``total``."""
        chunk = self.ulysses_size * self.local
        return max(0, min(chunk, self.total - ring_rank * chunk))

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
