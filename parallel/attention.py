"""The attention kernel each rank runs on its heads, and the ComfyUI attention override that adds Ulysses × Ring.

ComfyUI routes every ``optimized_attention`` call through ``transformer_options["optimized_attention_override"]``
when it is set; model adapters set it only for the sequence-mixing (self/joint) attention, never for
cross-attention to text, which needs no exchange because every rank holds all text tokens.
"""
import importlib.util
from typing import Callable

import torch
import torch.nn.functional as F

from .sequence import SequenceShard
from .ulysses import AttentionFn, joint_ulysses_attention, ulysses_attention


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def _flash(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func
    return flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


def _sage(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from sageattention import sageattn
    return sageattn(q, k, v, tensor_layout="HND", is_causal=False)


_BACKENDS = {"sdpa": (_sdpa, None), "flash": (_flash, "flash_attn"), "sage": (_sage, "sageattention")}


def resolve_backend(name: str, device: torch.device, ring: bool = False) -> tuple[AttentionFn, str | None]:
    """The kernel for ``name``, or SDPA and a warning saying why ``name`` cannot run here.

    Under a ring every sequence-parallel attention runs PyTorch's fused kernels that return the log-sum-exp the ring's
    merge needs (see ring.py), so another backend would not be used."""
    fn, package = _BACKENDS[name]
    if package is None:
        return fn, None
    if ring:
        return _sdpa, (f"attention backend {name!r} is not used with Ring degree > 1: ring attention runs PyTorch's "
                       "fused SDPA kernels, which return the log-sum-exp it merges with")
    if device.type != "cuda":
        return _sdpa, f"attention backend {name!r} needs a CUDA GPU; using SDPA on {device.type}"
    if importlib.util.find_spec(package) is None:
        return _sdpa, f"attention backend {name!r} needs the {package} package, which is not installed; using SDPA"
    return fn, None


def _override(run: Callable) -> Callable:
    """An ``optimized_attention_override`` that hands ``run`` [B, S, H·D] q, k, v and returns its output as asked."""
    def override(func, q, k, v, heads, mask=None, attn_precision=None, skip_reshape=False,
                 skip_output_reshape=False, **kwargs):
        if mask is not None:
            raise NotImplementedError("Tandem's sequence-parallel attention does not support attention masks yet")
        if skip_reshape:   # [B, H, S, D] → [B, S, H·D]
            q, k, v = (t.transpose(1, 2).flatten(2) for t in (q, k, v))
        out = run(q, k, v, heads)
        if skip_output_reshape:
            out = out.unflatten(2, (heads, -1)).transpose(1, 2)
        return out
    return override


def ulysses_override(shard: SequenceShard, attend: AttentionFn) -> Callable:
    """An ``optimized_attention_override`` that runs the call as Ulysses (× Ring) attention over ``shard.group``."""
    return _override(lambda q, k, v, heads: ulysses_attention(q, k, v, heads, shard, attend))


def joint_ulysses_override(shard: SequenceShard, attend: AttentionFn, text_first: bool) -> Callable:
    """The override for joint text-image attention (Flux-style blocks): the tokens a call holds beyond this rank's
    image slice are the replicated text, placed first or last as the model concatenates them."""
    return _override(lambda q, k, v, heads: joint_ulysses_attention(
        q, k, v, heads, q.shape[1] - shard.local, text_first, shard, attend))


def with_override(transformer_options: dict, override: Callable) -> dict:
    """A copy of ``transformer_options`` whose attention calls go through ``override``."""
    return {**transformer_options, "optimized_attention_override": override}
