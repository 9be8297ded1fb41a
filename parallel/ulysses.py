"""Ulysses sequence-parallel attention: all-to-all (tokens → heads), local attention, all-to-all back.

One fused all-to-all moves q, k and v together. On 2×H200 this plain path took 21.3 ms for one Wan-14B
attention call against 33.1 ms through xfuser's ``xFuserLongContextAttention`` (see BENCHMARKS.md), so
Tandem runs Ulysses itself and keeps xfuser/yunchang for what they add (ring attention).
"""
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .sequence import SequenceShard

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]   # [B, H, S, D] each


def _exchange(x: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """all_to_all_single along dim 0 (one chunk per rank), out of place."""
    x = x.contiguous()
    out = torch.empty_like(x)          # after .contiguous(): empty_like keeps a permuted input's strides
    dist.all_to_all_single(out, x, group=group)
    return out


def tokens_to_heads(qkv: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[3, B, S_local, H, D] (all heads, my tokens) → [3, B, H/P, P·S_local, D] (my heads, all tokens)."""
    p = dist.get_world_size(group)
    n, b, s, h, d = qkv.shape
    x = qkv.reshape(n, b, s, p, h // p, d).permute(3, 0, 1, 2, 4, 5)          # [P, 3, B, S, H/P, D]
    x = _exchange(x, group)                                                     # dim 0 now = source rank
    return x.permute(1, 2, 4, 0, 3, 5).reshape(n, b, h // p, p * s, d)


def heads_to_tokens(out: torch.Tensor, group: dist.ProcessGroup) -> torch.Tensor:
    """[B, H/P, P·S_local, D] (my heads, all tokens) → [B, S_local, H, D] (all heads, my tokens)."""
    p = dist.get_world_size(group)
    b, hl, sp, d = out.shape
    x = out.reshape(b, hl, p, sp // p, d).permute(2, 0, 3, 1, 4)                # [P, B, S, H/P, D]
    x = _exchange(x, group)                                                     # dim 0 now = head group
    return x.permute(1, 2, 0, 3, 4).reshape(b, sp // p, p * hl, d)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, shard: SequenceShard,
                      attend: AttentionFn) -> torch.Tensor:
    """Exact self-attention over the whole sequence for this rank's [B, S_local, H·D] q, k, v.

    Padding tokens (past ``shard.total``) are dropped before ``attend`` so they never act as keys.
    """
    shard.attention_calls += 1
    b, s, hd = q.shape
    qkv = torch.stack((q, k, v)).view(3, b, s, heads, hd // heads)
    q, k, v = tokens_to_heads(qkv, shard.group).narrow(3, 0, shard.total).unbind(0)
    out = attend(q, k, v)
    pad = shard.padded - shard.total
    if pad:
        out = F.pad(out, (0, 0, 0, pad))
    return heads_to_tokens(out, shard.group).reshape(b, s, hd)
