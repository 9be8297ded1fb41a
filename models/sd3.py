"""SD3 / SD3.5 (ComfyUI's MMDiT, ``OpenAISignatureMMDITWrapper``): split the image tokens at the first joint block,
gather after ``final_layer``.

MMDiT adds its position table to the patch embedding of the whole grid (``x_embedder(x) + cropped_pos_embed``, not
a module of its own), so the image tokens are split where they first enter a joint block: from there on each rank
holds its slice, the text (and register tokens) stay replicated. Each joint block's attention over [text; image]
runs through joint Ulysses (text first, as ``_block_mixing`` concatenates it); SD3.5 Medium's second, image-only
attention (``x_block.attn2``) reaches the same override through the same ``transformer_options`` and runs as plain
Ulysses. ControlNet residuals, which MMDiT adds to every image token after each block (``x += add``), reach each
rank as its (padded) slice; the ControlNet itself runs on the full input on every rank.
"""
from functools import partial

from ..parallel.attention import joint_ulysses_override, ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import LocalControl, gather_tokens

FAMILY = "SD3"
MODEL_CLASSES = ("comfy.ldm.modules.diffusionmodules.mmdit.OpenAISignatureMMDITWrapper",)
FSDP_BLOCKS = ("joint_blocks",)
HOOKS = {"split": ("joint_blocks.0",), "attention": ("joint_blocks.*",), "gather": ("final_layer",)}
CONTROL_KEYS = ("output",)     # residuals added to all image tokens after each joint block


def num_heads(diffusion_model) -> int:
    return diffusion_model.num_heads


def joint_or_image(shard: SequenceShard, attend: AttentionFn):
    """One override for both attentions a block runs: [text; image slice] as joint, the image slice alone as plain
    Ulysses (q is [B, S, H·D] in both: MMDiT never passes skip_reshape)."""
    joint, image = joint_ulysses_override(shard, attend, text_first=True), ulysses_override(shard, attend)
    return lambda func, q, *args, **kwargs: (image if q.shape[1] == shard.local else joint)(func, q, *args, **kwargs)


def begin(shard: SequenceShard, control: LocalControl, module, args, kwargs):
    shard.total = None
    return control.take(module, args, kwargs)


def block_pre(shard: SequenceShard, control: LocalControl, override, module, args, kwargs):
    """Joint block: (context, x); the first of a forward splits x, which still holds every image token."""
    context, x, *rest = args
    if shard.total is None:
        shard.total = x.shape[1]
        x = shard.split(x)
        control.fill(module, args, None)
    shard.seen_block_tokens.add(x.shape[1])
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return (context, x, *rest), kwargs


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    override, control = joint_or_image(shard, attend), LocalControl(shard, CONTROL_KEYS, whole=True)
    diffusion_model.register_forward_pre_hook(partial(begin, shard, control), with_kwargs=True)
    for block in diffusion_model.joint_blocks:
        block.register_forward_pre_hook(partial(block_pre, shard, control, override), with_kwargs=True)
    diffusion_model.final_layer.register_forward_hook(partial(gather_tokens, shard))
