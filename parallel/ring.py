"""Ring attention: exact attention of this rank's queries over key/value chunks passed around a ring of ranks.

Each rank starts with its own K/V chunk; at every step it sends the chunk it holds to the next rank and receives the
previous rank's (``batch_isend_irecv``, so the transfer overlaps the attention on the chunk in hand). Each step's
partial output is folded into the running result with its log-sum-exp (an online softmax, in fp32), which gives the
softmax over all keys without ever holding them together. Tandem implements this itself: yunchang's CPU ring path did
not match SDPA, and xfuser needs CUDA to start.
"""
import torch
import torch.distributed as dist

Partial = tuple[torch.Tensor, torch.Tensor]   # output [B, H, S, D] and its log-sum-exp [B, H, S]


def attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Partial:
    """Softmax attention of [B, H, Sq, D] q over k, v, and the natural log-sum-exp of each query's scores.

    The fused kernels that return the log-sum-exp: PyTorch's flash kernel on CPU; on CUDA its flash kernel for half
    precision (head dim a multiple of 8, at most 256) and its memory-efficient kernel otherwise (which pads the
    log-sum-exp's rows to a multiple of 32); plain math elsewhere. Every kernel needs at least one query (the CPU one
    crashes on none).
    """
    if q.device.type == "cpu":
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v)
        return out, lse
    half = q.dtype in (torch.float16, torch.bfloat16)
    if q.device.type == "cuda" and half and q.shape[-1] <= 256 and q.shape[-1] % 8 == 0:
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v)[:2]
        return out, lse
    if q.device.type == "cuda":
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
        return out, lse[..., :q.shape[2]]
    return math_attention_with_lse(q, k, v)


def math_attention_with_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> Partial:
    """The same in plain fp32 math: for devices without a fused kernel that returns the log-sum-exp."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = scores.logsumexp(dim=-1)
    return ((scores - lse.unsqueeze(-1)).exp() @ v.float()).to(q.dtype), lse


def merge(acc: Partial | None, part: Partial) -> Partial:
    """Fold the attention over one more key chunk into the accumulated one: the softmax over both chunks' keys.

    Each output is re-weighted by exp(its lse − the joint lse), so no exponent exceeds 0 and nothing overflows. The
    accumulator is fp32 whatever the inputs, and is updated in place.
    """
    out, lse = part[0].float(), part[1].float()
    if acc is None:
        return out, lse
    acc_out, acc_lse = acc
    joint = torch.logaddexp(acc_lse, lse)
    acc_out.mul_((acc_lse - joint).exp().unsqueeze(-1)).add_(out * (lse - joint).exp().unsqueeze(-1))
    return acc_out, joint


def _pass_on(send: torch.Tensor, receive: torch.Tensor, group: dist.ProcessGroup) -> list[dist.Work]:
    """Start sending ``send`` to the next rank of the ring and receiving the previous rank's chunk into ``receive``."""
    n, me = dist.get_world_size(group), dist.get_rank(group)
    ops = [dist.P2POp(dist.isend, send, dist.get_global_rank(group, (me + 1) % n), group),
           dist.P2POp(dist.irecv, receive, dist.get_global_rank(group, (me - 1) % n), group)]
    return dist.batch_isend_irecv(ops)


def ring_attention(q: torch.Tensor, kv: torch.Tensor, valid: list[int], group: dist.ProcessGroup,
                   local_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Exact attention of this rank's [B, H, Sq, D] queries over every ring rank's keys (and ``local_kv``).

    ``kv`` is this rank's contiguous [2, B, C, H, D] chunk of keys and values (token-major, as Ulysses receives it);
    every rank passes the same shape, and only the first ``valid[j]`` keys of ring rank j's chunk are real (the
    sequence's padding lives at the end of the last chunks, and must never act as a key). ``kv`` is reused as a
    receive buffer. ``local_kv`` ([B, H, T, D] keys and values every rank holds, e.g. replicated text) is attended
    here once and never passed on. Returns [B, H, Sq, D] in q's dtype.
    """
    n, me = dist.get_world_size(group), dist.get_rank(group)
    acc = None if local_kv is None or not q.shape[2] else merge(None, attention_with_lse(q, *local_kv))
    buffers = (kv, torch.empty_like(kv))
    for step in range(n):
        chunk, source = buffers[step % 2], (me - step) % n
        pending = _pass_on(chunk, buffers[(step + 1) % 2], group) if step + 1 < n else []
        if valid[source] and q.shape[2]:
            k, v = (chunk[i, :, :valid[source]].transpose(1, 2) for i in range(2))
            acc = merge(acc, attention_with_lse(q, k, v))
        for work in pending:
            work.wait()
    return q if acc is None else acc[0].to(q.dtype)   # no accumulator only without queries (a rank of padding)
