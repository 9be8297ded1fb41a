"""Flux (1 dev/schnell/Kontext, 2): split the image tokens after ``img_in``, gather after ``final_layer``.

Text tokens stay replicated on every rank; the double and single blocks' joint attention runs through joint Ulysses
(text first, as Flux concatenates [txt; img]). Kontext reference latents are appended to the image tokens before
``img_in``, so the split covers them. The RoPE ids are split the same way just before ``pe_embedder``.
"""
from functools import partial

import torch
from comfy.ldm.flux.model import Flux

from ..parallel.attention import joint_ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn

MODEL_CLASSES = (Flux,)
FAMILY = "Flux"


def num_heads(diffusion_model: Flux) -> int:
    return diffusion_model.num_heads


def refuse_control(module, args, kwargs) -> None:
    """ControlNet residuals are added to image tokens by absolute position, which a split would misplace."""
    if kwargs.get("control") is not None:
        raise NotImplementedError("Tandem's sequence parallelism does not support ControlNet yet: "
                                  "set Ulysses degree to 1 for this workflow")


def split_tokens(shard: SequenceShard, module, args, out: torch.Tensor) -> torch.Tensor:
    """Patch embedding's output holds every image token: from here on each rank keeps its slice."""
    shard.total = out.shape[1]
    return shard.split(out)


def split_ids(shard: SequenceShard, text_first: bool, module, args):
    """Position ids of [text; image] (or [image; text]): keep all text ids and this rank's image ids."""
    ids = args[0]
    text = ids.shape[1] - shard.total
    if text_first:
        return (torch.cat((ids[:, :text], shard.split(ids[:, text:])), dim=1),)
    return (torch.cat((shard.split(ids[:, :shard.total]), ids[:, shard.total:]), dim=1),)


def joint_block(shard: SequenceShard, override, image: str | None, module, args, kwargs):
    """Route the block's joint attention through Ulysses; record the image tokens a block with an ``image`` stream
    argument runs on (single blocks hold [text; image] in one tensor)."""
    if image is not None:
        shard.seen_block_tokens.add(kwargs[image].shape[1])
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return args, kwargs


def gather_tokens(shard: SequenceShard, module, args, out: torch.Tensor) -> torch.Tensor:
    return shard.gather(out)


def install_joint(diffusion_model, shard: SequenceShard, attend: AttentionFn, text_first: bool, begin) -> None:
    """The hooks every Flux-built family (double + single blocks, ``img_in``, ``pe_embedder``, ``final_layer``) needs;
    ``begin`` runs first in each forward to refuse inputs the split would break."""
    override = joint_ulysses_override(shard, attend, text_first)
    diffusion_model.register_forward_pre_hook(begin, with_kwargs=True)
    diffusion_model.img_in.register_forward_hook(partial(split_tokens, shard))
    diffusion_model.pe_embedder.register_forward_pre_hook(partial(split_ids, shard, text_first))
    for block in diffusion_model.double_blocks:
        block.register_forward_pre_hook(partial(joint_block, shard, override, "img"), with_kwargs=True)
    for block in diffusion_model.single_blocks:
        block.register_forward_pre_hook(partial(joint_block, shard, override, None), with_kwargs=True)
    diffusion_model.final_layer.register_forward_hook(partial(gather_tokens, shard))


def install_sequence_parallel(diffusion_model: Flux, shard: SequenceShard, attend: AttentionFn) -> None:
    install_joint(diffusion_model, shard, attend, text_first=True, begin=refuse_control)
