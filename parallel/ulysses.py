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
    """Start exchanging ``blocks[j, r]`` with rank r for every batch index j ([B, P, S, H, D]).

    ``received[j]`` ([P·S, H, D] or [P, S, H, D]) must be contiguous; ``received`` itself may be a slice of a
    larger buffer (joint attention keeps the text rows ahead of the image rows).
    """
    return [dist.all_to_all_single(received[j].view(blocks.shape[1:]), blocks[j], group=group, async_op=True)
            for j in range(blocks.shape[0])]


def _wait(works: list[dist.Work]) -> None:
    for work in works:
        work.wait()


def _tokens_to_heads(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, shard: SequenceShard,
                     lead: int = 0) -> torch.Tensor:
    """Every rank's tokens of my heads, as a [3, B, lead + P·S, H/P, D] buffer for this rank's [B, S, H·D] q, k, v.

    Rank r's tokens land at rows ``lead + r·S``; the first ``lead`` rows are left for the caller to fill.
    """
    p = shard.size
    b, s, hd = q.shape
    d, hl = hd // heads, heads // p
    send = torch.empty((3, b, p, s, hl, d), dtype=q.dtype, device=q.device)
    received, works = torch.empty((3, b, lead + p * s, hl, d), dtype=q.dtype, device=q.device), []
    for i, t in enumerate((q, k, v)):                     # block r holds the heads rank r will own ...
        send[i].copy_(t.view(b, s, p, hl, d).transpose(1, 2))
        works += _start_all_to_all(send[i], received[i, :, lead:], shard.group)   # ... and leaves while the next packs
    _wait(works)
    return received


def _start_heads_to_tokens(out: torch.Tensor, s: int, shard: SequenceShard) -> tuple[torch.Tensor, list[dist.Work]]:
    """Start sending each rank its tokens of my heads' [B, total, H/P, D] output; return the [B, P, S, H/P, D]
    buffer whose block r will hold my tokens of rank r's heads, and the pending exchanges."""
    p = shard.size
    b, total, hl, d = out.shape
    if total < p * s or not out.is_contiguous():
        out = torch.nn.functional.pad(out, (0, 0, 0, 0, 0, p * s - total)).contiguous()
    back = torch.empty((b, p, s, hl, d), dtype=out.dtype, device=out.device)
    return back, _start_all_to_all(out.view(b, p, s, hl, d), back, shard.group)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, shard: SequenceShard,
                      attend: AttentionFn) -> torch.Tensor:
    """Exact self-attention over the whole sequence for this rank's [B, S_local, H·D] q, k, v.

    Padding tokens (past ``shard.total``) are dropped before ``attend`` so they never act as keys.
    """
    shard.attention_calls += 1
    b, s, hd = q.shape
    received = _tokens_to_heads(q, k, v, heads, shard)
    q, k, v = (received[i, :, :shard.total].transpose(1, 2) for i in range(3))
    back, works = _start_heads_to_tokens(attend(q, k, v).transpose(1, 2), s, shard)   # [B, total, H/P, D]
    _wait(works)
    return back.transpose(1, 2).reshape(b, s, hd)


def joint_ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, text: int,
                            text_first: bool, shard: SequenceShard, attend: AttentionFn) -> torch.Tensor:
    """Exact joint attention over all text and image tokens for this rank's [B, text + S_local, H·D] q, k, v.

    Every rank holds all ``text`` tokens (first or last, as the model concatenates them) and its slice of the image:
    the image goes through the all-to-all, the text needs only this rank's heads. Attention runs on [text; image]
    (key order does not change attention) and the text output of all heads is gathered back.
    """
    shard.attention_calls += 1
    p, rank = shard.size, shard.rank
    b, n, hd = q.shape
    s, d, hl = n - text, hd // heads, heads // p
    txt, img = (slice(0, text), slice(text, n)) if text_first else (slice(s, n), slice(0, s))
    received = _tokens_to_heads(q[:, img], k[:, img], v[:, img], heads, shard, lead=text)
    for i, t in enumerate((q, k, v)):
        received[i, :, :text] = t[:, txt].view(b, text, p, hl, d)[:, :, rank]
    q, k, v = (received[i, :, :text + shard.total].transpose(1, 2) for i in range(3))
    out = attend(q, k, v).transpose(1, 2)                 # [B, text + total, H/P, D]
    text_heads = [torch.empty((b, text, hl, d), dtype=out.dtype, device=out.device) for _ in range(p)]
    gathered = dist.all_gather(text_heads, out[:, :text].contiguous(), group=shard.group, async_op=True)
    back, works = _start_heads_to_tokens(out[:, text:], s, shard)
    _wait(works + [gathered])
    parts = (torch.stack(text_heads, dim=2).view(b, text, hd), back.transpose(1, 2).reshape(b, s, hd))
    return torch.cat(parts if text_first else parts[::-1], dim=1)
