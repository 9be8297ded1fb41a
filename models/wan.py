"""Wan 2.1 / 2.2 (T2V, I2V, TI2V): split the tokens after patch embedding, gather after the head.

Everything between is per-token (norms, FFN, cross-attention to the replicated text) except self-attention,
which runs through Ulysses. The split is done with forward hooks on ComfyUI's own modules, so ComfyUI's
model code, patches and wrappers stay untouched.
"""
from functools import partial

import torch
from comfy.ldm.wan.model import WanModel

from ..parallel.attention import ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn

MODEL_CLASSES = (WanModel,)
FAMILY = "Wan"


def num_heads(diffusion_model: WanModel) -> int:
    return diffusion_model.num_heads


def _per_token(shard: SequenceShard, e: torch.Tensor) -> torch.Tensor:
    """Split a modulation tensor that carries one row per token (Wan 2.2 TI2V); leave shared rows alone."""
    if e.ndim < 3 or e.shape[1] == 1:
        return e
    if e.shape[1] != shard.total:   # one row per frame: ComfyUI's repeat_e expands it to tokens
        e = torch.repeat_interleave(e, -(-shard.total // e.shape[1]), dim=1)[:, :shard.total]
    return shard.split(e)


def _begin(shard: SequenceShard, module, args):
    shard.total = None


def _block_pre(shard: SequenceShard, module, args, kwargs):
    x = args[0]
    if shard.total is None:          # first block of this forward: x still holds every token
        shard.total = x.shape[1]
        x = shard.split(x)
    shard.seen_block_tokens.add(x.shape[1])
    kwargs["freqs"] = shard.split(kwargs["freqs"])
    kwargs["e"] = _per_token(shard, kwargs["e"])
    return (x, *args[1:]), kwargs


def _self_attn_pre(override, module, args, kwargs):
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return args, kwargs


def _head_pre(shard: SequenceShard, module, args):
    x, e = args
    return x, _per_token(shard, e)


def _head_post(shard: SequenceShard, module, args, out):
    return shard.gather(out)


def install_sequence_parallel(diffusion_model: WanModel, shard: SequenceShard, attend: AttentionFn) -> None:
    override = ulysses_override(shard, attend)
    diffusion_model.register_forward_pre_hook(partial(_begin, shard))
    for block in diffusion_model.blocks:
        block.register_forward_pre_hook(partial(_block_pre, shard), with_kwargs=True)
        block.self_attn.register_forward_pre_hook(partial(_self_attn_pre, override), with_kwargs=True)
    diffusion_model.head.register_forward_pre_hook(partial(_head_pre, shard))
    diffusion_model.head.register_forward_hook(partial(_head_post, shard))
