"""Cosmos Predict 2 (``MiniTrainDIT``: Predict2 text-to-image and Video2World): split the tokens at the first block,
gather after the final layer.

Its blocks hold the tokens as a [B, T, H, W, D] grid and modulate them per latent frame: [B, T, D] rows, one shared
row, or one per frame when Video2World's conditioning frames get their own timestep. A rank's slice of the flattened
tokens starts and ends inside frames, so the blocks and the final layer get it as a [B, L, 1, 1, D] grid of L
one-token frames, with one modulation row per token (a shared row stays shared) and the slice's RoPE rows; ComfyUI's
block code (its flattening for attention, its per-frame broadcasts) then runs unchanged on the slice. Self-attention
runs through Ulysses; cross-attention to the replicated text stays local. The final layer's output is gathered and
laid back into ComfyUI's [B, T, H, W, D'] grid for its unpatchify.
"""
from functools import partial

import torch

from ..parallel.attention import ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn

FAMILY = "Cosmos Predict 2"
MODEL_CLASSES = ("comfy.ldm.cosmos.predict2.MiniTrainDIT",)
FSDP_BLOCKS = ("blocks",)
HOOKS = {"split": ("blocks.*",), "attention": ("blocks.*.self_attn",), "gather": ("final_layer",)}


def num_heads(diffusion_model) -> int:
    return diffusion_model.num_heads


def _tokens(shard: SequenceShard, x: torch.Tensor) -> torch.Tensor:
    """This rank's slice of a [B, T, H, W, C] grid as a [B, L, 1, 1, C] grid of one-token frames."""
    return shard.split(x.flatten(1, 3))[:, :, None, None]


def _per_token(shard: SequenceShard, grid: dict, rows: torch.Tensor | None) -> torch.Tensor | None:
    """Per-frame modulation rows [B, T, C] -> this rank's tokens' rows [B, L, C]; a shared row ([B, 1, C]) stays."""
    if rows is None or rows.shape[1] == 1:
        return rows
    return shard.split(torch.repeat_interleave(rows, grid["tokens_per_frame"], dim=1))


def _begin(shard: SequenceShard, module, args, kwargs):
    shard.total = None


def _block_pre(shard: SequenceShard, grid: dict, module, args, kwargs):
    x, emb, *rest = args
    if shard.total is None:          # first block of this forward: x still holds the whole grid
        grid.update(shape=x.shape[1:4], tokens_per_frame=x.shape[2] * x.shape[3])
        shard.total = x.shape[1:4].numel()
        x = _tokens(shard, x)
    shard.seen_block_tokens.add(x.shape[1])
    kwargs["rope_emb_L_1_1_D"] = shard.split(kwargs["rope_emb_L_1_1_D"])
    kwargs["adaln_lora_B_T_3D"] = _per_token(shard, grid, kwargs.get("adaln_lora_B_T_3D"))
    if kwargs.get("extra_per_block_pos_emb") is not None:     # a [B, T, H, W, D] grid, like the tokens
        kwargs["extra_per_block_pos_emb"] = _tokens(shard, kwargs["extra_per_block_pos_emb"])
    return (x, _per_token(shard, grid, emb), *rest), kwargs


def _self_attn_pre(override, module, args, kwargs):
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return args, kwargs


def _final_pre(shard: SequenceShard, grid: dict, module, args, kwargs):
    x, emb = args
    kwargs["adaln_lora_B_T_3D"] = _per_token(shard, grid, kwargs.get("adaln_lora_B_T_3D"))
    return (x, _per_token(shard, grid, emb)), kwargs


def _final_post(shard: SequenceShard, grid: dict, module, args, kwargs, out):
    return shard.gather(out.flatten(1, 3)).unflatten(1, tuple(grid["shape"]))


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    override, grid = ulysses_override(shard, attend), {}
    diffusion_model.register_forward_pre_hook(partial(_begin, shard), with_kwargs=True)
    for block in diffusion_model.blocks:
        block.register_forward_pre_hook(partial(_block_pre, shard, grid), with_kwargs=True)
        block.self_attn.register_forward_pre_hook(partial(_self_attn_pre, override), with_kwargs=True)
    diffusion_model.final_layer.register_forward_pre_hook(partial(_final_pre, shard, grid), with_kwargs=True)
    diffusion_model.final_layer.register_forward_hook(partial(_final_post, shard, grid), with_kwargs=True)
