"""Wan 2.1 / 2.2 (T2V, I2V, TI2V, VACE, Fun Camera): split the tokens after patch embedding, gather after the head.

Everything between is per-token (norms, FFN, cross-attention to the replicated text) except self-attention,
which runs through Ulysses. The split is done with forward hooks on ComfyUI's own modules, so ComfyUI's
model code, patches and wrappers stay untouched. Fun Camera (``CameraWanModel``) adds its camera embedding to the
tokens before they are flattened, so they reach the first block with it and split alike.
"""
from functools import partial

import torch

from ..parallel.attention import ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn

FAMILY = "Wan"
MODEL_CLASSES = ("comfy.ldm.wan.model.WanModel", "comfy.ldm.wan.model.VaceWanModel",
                 "comfy.ldm.wan.model.CameraWanModel")
FSDP_BLOCKS = ("blocks", "vace_blocks")
HOOKS = {"split": ("blocks.*", "vace_blocks.*?"), "attention": ("blocks.*.self_attn", "vace_blocks.*.self_attn?"),
         "gather": ("head",)}


def num_heads(diffusion_model) -> int:
    return diffusion_model.num_heads


def _per_token(shard: SequenceShard, e: torch.Tensor, per_token_ndim: int) -> torch.Tensor:
    """Split a modulation tensor that carries rows along the tokens (Wan 2.2 TI2V: [B, L, 6, C] into blocks,
    [B, L, C] into the head); leave shared modulation ([B, 6, C], [B, 1, 6, C], [B, C], ...) alone."""
    if e.ndim != per_token_ndim or e.shape[1] == 1:
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
    kwargs["e"] = _per_token(shard, kwargs["e"], 4)
    return (x, *args[1:]), kwargs


def _vace_block_pre(shard: SequenceShard, module, args, kwargs):
    """VACE blocks get the control tokens ``c`` (full-length at the first one) and the full pre-block ``x``."""
    c = args[0]
    if c.shape[1] == shard.total:
        c = shard.split(c)
    kwargs["x"] = shard.split(kwargs["x"])
    kwargs["freqs"] = shard.split(kwargs["freqs"])
    kwargs["e"] = _per_token(shard, kwargs["e"], 4)
    return (c, *args[1:]), kwargs


def _self_attn_pre(override, module, args, kwargs):
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return args, kwargs


def _head_pre(shard: SequenceShard, module, args):
    x, e = args
    return x, _per_token(shard, e, 3)


def _head_post(shard: SequenceShard, module, args, out):
    return shard.gather(out)


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    override = ulysses_override(shard, attend)
    diffusion_model.register_forward_pre_hook(partial(_begin, shard))
    for block in diffusion_model.blocks:
        block.register_forward_pre_hook(partial(_block_pre, shard), with_kwargs=True)
        block.self_attn.register_forward_pre_hook(partial(_self_attn_pre, override), with_kwargs=True)
    for block in getattr(diffusion_model, "vace_blocks", None) or []:   # VACE: the control branch splits alike
        block.register_forward_pre_hook(partial(_vace_block_pre, shard), with_kwargs=True)
        block.self_attn.register_forward_pre_hook(partial(_self_attn_pre, override), with_kwargs=True)
    diffusion_model.head.register_forward_pre_hook(partial(_head_pre, shard))
    diffusion_model.head.register_forward_hook(partial(_head_post, shard))
