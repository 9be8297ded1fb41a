"""Chroma Radiance: Chroma on 16×16 pixel patches. Split the patch tokens where ``img_in_patch`` makes them, gather
them when the last single block returns, before the NeRF head.

``ChromaRadiance.img_in`` is a method (the Conv2d ``img_in_patch``, then a flatten), not a module, so the split hooks
the convolution: its [B, D, h, w] output comes back as this rank's tokens in a [B, D, L, 1] map, which ``img_in``
flattens to [B, L, D]. Blocks and RoPE ids are Chroma's ([txt; img], joint Ulysses text first). There is no
``final_layer``: ``forward_nerf`` unfolds the whole input image into patches and pairs each with its token, so the
tokens must be whole by then; the last single block's output [txt; image slice] is gathered. The NeRF head, a
per-patch MLP, then runs on every rank over all patches (not split). ControlNet is refused: its last residual would
be added after the gather, and no ComfyUI ControlNet fits Radiance's pixel patches anyway.
"""
from functools import partial

import torch

from ..parallel.attention import joint_ulysses_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import joint_block, split_ids, split_tokens

FAMILY = "Chroma Radiance"
MODEL_CLASSES = ("comfy.ldm.chroma_radiance.model.ChromaRadiance",)
FSDP_BLOCKS = ("double_blocks", "single_blocks")
HOOKS = {"split": ("img_in_patch",), "ids": ("pe_embedder",), "attention": ("double_blocks.*", "single_blocks.*"),
         "gather": ("single_blocks.*",)}     # gather: the last single block's output


def num_heads(diffusion_model) -> int:
    return diffusion_model.num_heads


def refuse_control(module, args, kwargs) -> None:
    if kwargs.get("control") is not None:
        raise NotImplementedError("Tandem's sequence parallelism does not support ControlNet on Chroma Radiance: set "
                                  "Ulysses degree and Ring degree to 1 for this workflow")


def split_patches(shard: SequenceShard, module, args, out: torch.Tensor) -> torch.Tensor:
    """[B, D, h, w] patch embeddings -> this rank's L tokens as [B, D, L, 1], which ``img_in`` flattens to [B, L, D]."""
    return split_tokens(shard, module, args, out.flatten(2).transpose(1, 2)).transpose(1, 2).unsqueeze(-1)


def gather_last(shard: SequenceShard, module, args, out):
    """The last block's output with every image token: [txt; img] from a single block, (img, txt) from a double."""
    if isinstance(out, tuple):
        return shard.gather(out[0]), *out[1:]
    text = out.shape[1] - shard.local
    return torch.cat((out[:, :text], shard.gather(out[:, text:])), dim=1)


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    override = joint_ulysses_override(shard, attend, text_first=True)
    diffusion_model.register_forward_pre_hook(refuse_control, with_kwargs=True)
    diffusion_model.img_in_patch.register_forward_hook(partial(split_patches, shard))
    diffusion_model.pe_embedder.register_forward_pre_hook(partial(split_ids, shard, True))
    for block in diffusion_model.double_blocks:
        block.register_forward_pre_hook(partial(joint_block, shard, override, "img"), with_kwargs=True)
    for block in diffusion_model.single_blocks:
        block.register_forward_pre_hook(partial(joint_block, shard, override, None), with_kwargs=True)
    last = diffusion_model.single_blocks or diffusion_model.double_blocks
    last[-1].register_forward_hook(partial(gather_last, shard))
