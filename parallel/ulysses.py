"""Ulysses sequence-parallel attention: all-to-all (tokens → heads), local attention, all-to-all back.

q, k and v travel in one all-to-all, packed straight into the send buffer (one copy). With ``chunks`` > 1 the
local heads are split into groups whose exchanges run asynchronously, so one group's communication overlaps
another group's attention. On 2×H200 the plain path took 22.4 ms for one Wan-14B attention call against 33.8 ms
through xfuser's ``xFuserLongContextAttention`` (see BENCHMARKS.md), so Tandem runs Ulysses itself and keeps
xfuser/yunchang for what they add (ring attention).
"""
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .sequence import SequenceShard

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]   # [B, H, S, D] each


def _exchange(x: torch.Tensor, group: dist.ProcessGroup) -> tuple[torch.Tensor, dist.Work]:
    """Start all_to_all_single along dim 0 (one chunk per rank) of a contiguous tensor."""
    out = torch.empty_like(x)
    return out, dist.all_to_all_single(out, x, group=group, async_op=True)


def ulysses_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, shard: SequenceShard,
                      attend: AttentionFn, chunks: int = 1) -> torch.Tensor:
    """Exact self-attention over the whole sequence for this rank's [B, S_local, H·D] q, k, v.

    Padding tokens (past ``shard.total``) are dropped before ``attend`` so they never act as keys.
    """
    shard.attention_calls += 1
    group, p = shard.group, shard.size
    b, s, hd = q.shape
    d, hc = hd // heads, heads // p // chunks            # head dim; heads per rank per chunk
    send = torch.empty((chunks, p, 3, b, s, hc, d), dtype=q.dtype, device=q.device)
    for i, t in enumerate((q, k, v)):                    # head h = rank·(H/P) + chunk·hc + j
        send[:, :, i].copy_(t.view(b, s, p, chunks, hc, d).permute(3, 2, 0, 1, 4, 5))
    inbound = [_exchange(send[c], group) for c in range(chunks)]
    outbound = []
    for received, work in inbound:                       # [P (source rank), 3, B, S, hc, D]
        work.wait()
        qkv = received.permute(1, 2, 4, 0, 3, 5).reshape(3, b, hc, p * s, d).narrow(3, 0, shard.total)
        out = attend(*qkv.unbind(0))                     # [B, hc, total, D]
        out = F.pad(out, (0, 0, 0, p * s - shard.total))
        outbound.append(_exchange(out.view(b, hc, p, s, d).permute(2, 0, 3, 1, 4).contiguous(), group))
    for _, work in outbound:
        work.wait()
    back = torch.stack([received for received, _ in outbound])   # [chunks, P (head group), B, S, hc, D]
    return back.permute(2, 3, 1, 0, 4, 5).reshape(b, s, hd)
