"""LTXV (ComfyUI's ``LTXVModel``, LTX-Video 0.9.x): split the video tokens at the first transformer block, gather them
before ``norm_out``.

Like Wan, each block is self-attention over the video tokens, cross-attention to the replicated text (under the
text's attention mask, which ComfyUI's attention keeps: every rank holds all text keys) and a per-token FFN, so only
``attn1`` runs through Ulysses. The RoPE table (keyframe positions and frame rate included) and the timestep
modulation are built for the whole sequence before the blocks: each block gets this rank's rows of the table and,
where a noise mask (image-to-video, LTXVAddGuide) gives every token its own timestep, this rank's timestep rows. The
output stage mixes the tokens with the per-token embedded timestep, which is not a module input, so the tokens are
gathered before ``norm_out`` and the short output stage (a norm and one Linear) runs on every token on every rank.
"""
from functools import partial

from ..parallel.attention import ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn

FAMILY = "LTXV"
MODEL_CLASSES = ("comfy.ldm.lightricks.model.LTXVModel",)
FSDP_BLOCKS = ("transformer_blocks",)
HOOKS = {"split": ("transformer_blocks.0",), "attention": ("transformer_blocks.*.attn1",), "gather": ("norm_out",)}


def num_heads(diffusion_model) -> int:
    return diffusion_model.transformer_blocks[0].attn1.heads


def _begin(shard: SequenceShard, module, args):
    shard.total = None


def _block_pre(shard: SequenceShard, module, args, kwargs):
    """Block: x, then pe ([B, 1, tokens, ...]) and timestep ([B, 1 or tokens, 6·D]) by keyword."""
    x = args[0]
    if shard.total is None:          # first block of this forward: x still holds every token
        shard.total = x.shape[1]
        x = shard.split(x)
    shard.seen_block_tokens.add(x.shape[1])
    kwargs["pe"] = shard.split(kwargs["pe"], dim=2)
    if kwargs["timestep"].shape[1] != 1:
        kwargs["timestep"] = shard.split(kwargs["timestep"])
    return (x, *args[1:]), kwargs


def _self_attn_pre(override, module, args, kwargs):
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return args, kwargs


def _gather(shard: SequenceShard, module, args):
    return (shard.gather(args[0]),)


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    override = ulysses_override(shard, attend)
    diffusion_model.register_forward_pre_hook(partial(_begin, shard))
    for block in diffusion_model.transformer_blocks:
        block.register_forward_pre_hook(partial(_block_pre, shard), with_kwargs=True)
        block.attn1.register_forward_pre_hook(partial(_self_attn_pre, override), with_kwargs=True)
    diffusion_model.norm_out.register_forward_pre_hook(partial(_gather, shard))
