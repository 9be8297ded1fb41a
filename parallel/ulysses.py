"""Ulysses sequence-parallel attention: all-to-all (tokens → heads), local attention, all-to-all back; and USP.

Buffers are laid out so that every all-to-all reads and writes whole contiguous blocks and attention reads the
received keys in place ([B, S, H, D] memory): the only copies are packing q, k, v for sending and unpacking the
output. On 2×H200 this path beats xfuser's ``xFuserLongContextAttention`` (see BENCHMARKS.md), so Tandem runs
Ulysses itself.

With a Ring degree (USP = Ulysses × Ring) the attention between the two all-to-alls is ring attention over the ring
group (see ring.py): the all-to-all gathers the Ulysses group's consecutive slices into one ring chunk, whose keys and
values then travel around the ring. Ulysses 1 skips the all-to-all and only packs K/V for the ring.
"""
from typing import Callable

import torch
import torch.distributed as dist

from .ring import ring_attention
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
    P is the Ulysses degree; with P = 1 (Ring alone) nothing is exchanged, the buffer only packs K/V for the ring.
    """
    p = shard.ulysses_size
    b, s, hd = q.shape
    d, hl = hd // heads, heads // p
    received, works = torch.empty((3, b, lead + p * s, hl, d), dtype=q.dtype, device=q.device), []
    if p == 1:
        for i, t in enumerate((q, k, v)):
            received[i, :, lead:].copy_(t.view(b, s, hl, d))
        return received
    send = torch.empty((3, b, p, s, hl, d), dtype=q.dtype, device=q.device)
    for i, t in enumerate((q, k, v)):                     # block r holds the heads rank r will own ...
        send[i].copy_(t.view(b, s, p, hl, d).transpose(1, 2))
        works += _start_all_to_all(send[i], received[i, :, lead:], shard.ulysses_group)   # ... leaves as the next packs
    _wait(works)
    return received


def _start_heads_to_tokens(out: torch.Tensor, s: int, shard: SequenceShard) -> tuple[torch.Tensor, list[dist.Work]]:
    """Start sending each rank its tokens of my heads' [B, total, H/P, D] output; return the [B, P, S, H/P, D]
    buffer whose block r will hold my tokens of rank r's heads, and the pending exchanges (none for Ulysses 1)."""
    p = shard.ulysses_size
    b, total, hl, d = out.shape
    if total < p * s or not out.is_contiguous():
        out = torch.nn.functional.pad(out, (0, 0, 0, 0, 0, p * s - total)).contiguous()
    if p == 1:
        return out.view(b, 1, s, hl, d), []
    back = torch.empty((b, p, s, hl, d), dtype=out.dtype, device=out.device)
    return back, _start_all_to_all(out.view(b, p, s, hl, d), back, shard.ulysses_group)


def _start_gather_heads(x: torch.Tensor, shard: SequenceShard) -> tuple[list[torch.Tensor], list[dist.Work]]:
    """Start gathering every Ulysses rank's heads of this [B, T, H/P, D] output (the replicated text's)."""
    if shard.ulysses_size == 1:
        return [x], []
    parts = [torch.empty(x.shape, dtype=x.dtype, device=x.device) for _ in range(shard.ulysses_size)]
    return parts, [dist.all_gather(parts, x.contiguous(), group=shard.ulysses_group, async_op=True)]


def _attend(received: torch.Tensor, text: int, shard: SequenceShard, attend: AttentionFn) -> torch.Tensor:
    """Attention of the queries in ``received`` ([3, B, text + chunk, H/P, D]: ``text`` replicated rows, then this
    ring rank's chunk) over every key of the sequence; returns [B, text + valid, H/P, D].

    Queries and keys past the chunk's real tokens are padding and are dropped. Without a ring the chunk is the whole
    sequence and ``attend`` runs on it. With one, the image K/V chunk goes around the ring (copied out of
    ``received`` only when text rows precede it) and the text K/V, which every rank holds, are attended here once.
    """
    valid = shard.chunk_valid(shard.ring_rank)
    q, k, v = (received[i, :, :text + valid].transpose(1, 2) for i in range(3))
    if shard.ring_group is None:
        return attend(q, k, v).transpose(1, 2)
    local = (k[:, :, :text], v[:, :, :text]) if text else None
    valid_per_chunk = [shard.chunk_valid(j) for j in range(shard.ring_size)]
    kv = received[1:, :, text:].contiguous()
    return ring_attention(q, kv, valid_per_chunk, shard.ring_group, local).transpose(1, 2)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, shard: SequenceShard,
                      attend: AttentionFn) -> torch.Tensor:
    """Exact self-attention over the whole sequence for this rank's [B, S_local, H·D] q, k, v.

    Padding tokens (past ``shard.total``) never act as keys.
    """
    shard.attention_calls += 1
    b, s, hd = q.shape
    received = _tokens_to_heads(q, k, v, heads, shard)
    back, works = _start_heads_to_tokens(_attend(received, 0, shard, attend), s, shard)
    _wait(works)
    return back.transpose(1, 2).reshape(b, s, hd)


def joint_ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, text: int,
                            text_first: bool, shard: SequenceShard, attend: AttentionFn) -> torch.Tensor:
    """Exact joint attention over all text and image tokens for this rank's [B, text + S_local, H·D] q, k, v.

    Every rank holds all ``text`` tokens (first or last, as the model concatenates them) and its slice of the image:
    the image goes through the all-to-all, the text needs only this rank's heads. Attention runs on [text; image]
    (key order does not change attention) and the text output of all heads is gathered back. Under a ring, every
    ring rank computes the text queries' output over all keys; ranks may differ in the last bits (merge order).
    """
    shard.attention_calls += 1
    p, rank = shard.ulysses_size, shard.ulysses_rank
    b, n, hd = q.shape
    s, d, hl = n - text, hd // heads, heads // p
    txt, img = (slice(0, text), slice(text, n)) if text_first else (slice(s, n), slice(0, s))
    received = _tokens_to_heads(q[:, img], k[:, img], v[:, img], heads, shard, lead=text)
    for i, t in enumerate((q, k, v)):
        received[i, :, :text] = t[:, txt].view(b, text, p, hl, d)[:, :, rank]
    out = _attend(received, text, shard, attend)          # [B, text + valid, H/P, D]
    text_heads, gathered = _start_gather_heads(out[:, :text], shard)
    back, works = _start_heads_to_tokens(out[:, text:], s, shard)
    _wait(works + gathered)
    parts = (torch.stack(text_heads, dim=2).view(b, text, hd), back.transpose(1, 2).reshape(b, s, hd))
    return torch.cat(parts if text_first else parts[::-1], dim=1)
