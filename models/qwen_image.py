"""Qwen-Image (and Edit): split the image tokens after ``img_in``, gather after ``proj_out``.

Like Flux (text replicated, joint attention of [txt; img] through joint Ulysses, edit reference latents appended to
the image tokens before ``img_in``), except that the RoPE ids are embedded before ``img_in``: the image token count
is then known only as the ids beyond the text, whose length the model's call gives.

ControlNet (InstantX's ``QwenImageControlNetModel``) runs on the full input on every rank; its residuals, which the
model adds to the first ``n`` image tokens after each block (``control["input"]``), reach it as this rank's part.
"""
from functools import partial

from ..parallel.attention import joint_ulysses_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import LocalControl, gather_tokens, joint_block, split_ids, split_tokens

FAMILY = "Qwen-Image"
MODEL_CLASSES = ("comfy.ldm.qwen_image.model.QwenImageTransformer2DModel",)
FSDP_BLOCKS = ("transformer_blocks",)
HOOKS = {"split": ("img_in",), "ids": ("pe_embedder",), "attention": ("transformer_blocks.*",), "gather": ("proj_out",)}
CONTROL_KEYS = ("input",)      # residuals added to a prefix of the image tokens after each transformer block


def num_heads(diffusion_model) -> int:
    """Inner width over head width (RoPE spans one head), which holds also for a model without blocks."""
    return diffusion_model.inner_dim // diffusion_model.pe_embedder.dim


def begin(text: dict, control: LocalControl, module, args, kwargs):
    """Remember this forward's text length (the RoPE ids are [text; image] before the image tokens exist) and
    give the model its own ControlNet dict."""
    text["tokens"] = kwargs["context"].shape[1]
    return control.take(module, args, kwargs)


def split_ids_after_text(shard: SequenceShard, text: dict, module, args):
    shard.total = args[0].shape[1] - text["tokens"]
    return split_ids(shard, True, module, args)


def install_sequence_parallel(diffusion_model, shard: SequenceShard,
                              attend: AttentionFn) -> None:
    override, text = joint_ulysses_override(shard, attend, text_first=True), {}
    control = LocalControl(shard, CONTROL_KEYS)
    diffusion_model.register_forward_pre_hook(partial(begin, text, control), with_kwargs=True)
    diffusion_model.pe_embedder.register_forward_pre_hook(partial(split_ids_after_text, shard, text))
    diffusion_model.img_in.register_forward_hook(partial(split_tokens, shard))
    diffusion_model.img_in.register_forward_hook(control.fill)
    for block in diffusion_model.transformer_blocks:
        block.register_forward_pre_hook(partial(joint_block, shard, override, "hidden_states"), with_kwargs=True)
    diffusion_model.proj_out.register_forward_hook(partial(gather_tokens, shard))
