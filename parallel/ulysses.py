"""Ulysses sequence-parallel attention: all-to-all (tokens → heads), local attention, all-to-all back.

Buffers are laid out so that every all-to-all reads and writes whole contiguous blocks and attention reads the
received keys in place ([B, S, H, D] memory): the only copies are packing q, k, v for sending and unpacking the
output. On 2×H200 this path beats xfuser's ``xFuserLongContextAttention`` (see BENCHMARKS.md), so Tandem runs
Ulysses itself and keeps xfuser/yunchang for what they add (ring attention).
"""
from typing import Callable

import torch
import torch.distributed as dist

from .sequence import SequenceShard

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]   # [B, H, S, D] each


def _start_all_to_all(blocks: torch.Tensor, received: torch.Tensor, group: dist.ProcessGroup) -> list[dist.Work]:
    """Start exchanging ``blocks[..., r, :, :, :]`` with rank r for every leading index ([..., P, S, H, D])."""
    flat_in, flat_out = blocks.view(-1, *blocks.shape[-4:]), received.view(-1, *blocks.shape[-4:])
    return [dist.all_to_all_single(flat_out[i], flat_in[i], group=group, async_op=True)
            for i in range(flat_in.shape[0])]


def _wait(works: list[dist.Work]) -> None:
    for work in works:
        work.wait()


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, shard: SequenceShard,
                      attend: AttentionFn) -> torch.Tensor:
    """Exact self-attention over the whole sequence for this rank's [B, S_local, H·D] q, k, v.

    Padding tokens (past ``shard.total``) are dropped before ``attend`` so they never act as keys.
    """
    shard.attention_calls += 1
    group, p, total = shard.group, shard.size, shard.total
    b, s, hd = q.shape
    d, hl = hd // heads, heads // p
    send = torch.empty((3, b, p, s, hl, d), dtype=q.dtype, device=q.device)
    received, works = torch.empty_like(send), []
    for i, t in enumerate((q, k, v)):                     # block r holds the heads rank r will own ...
        send[i].copy_(t.view(b, s, p, hl, d).transpose(1, 2))
        works += _start_all_to_all(send[i], received[i], group)   # ... and leaves while the next one packs
    _wait(works)                                          # received block r: rank r's tokens of my heads
    q, k, v = (received[i].view(b, p * s, hl, d)[:, :total].transpose(1, 2) for i in range(3))
    out = attend(q, k, v).transpose(1, 2)                 # [B, total, H/P, D]
    if total < p * s or not out.is_contiguous():
        out = torch.nn.functional.pad(out, (0, 0, 0, 0, 0, p * s - total)).contiguous()
    back = torch.empty_like(out).view(b, p, s, hl, d)
    _wait(_start_all_to_all(out.view(b, p, s, hl, d), back, group))   # block r: my tokens of rank r's heads
    return back.transpose(1, 2).reshape(b, s, hd)
