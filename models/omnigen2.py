"""Omnigen 2 (ComfyUI's ``OmniGen2Transformer2DModel``): split the image tokens at the first noise-refiner block and
the reference-image tokens at the first reference-refiner block, re-split them together at the first main block,
gather after ``norm_out``.

Omnigen 2 builds the RoPE rows of [caption; references; image] from the full grids, refines the caption alone
(``context_refiner``, under its text mask), the image alone (``noise_refiner``) and the reference images' tokens
alone (``ref_image_refiner``, ReferenceLatent's latents, each with its index embedding), then runs its main blocks
over [caption; references; image]. The caption stays replicated, so its refiner keeps ComfyUI's attention. Each of
the other refiners splits its tokens and their RoPE rows where they first enter it and runs Ulysses over them (the
refiners run one after the other, so one ``SequenceShard`` serves both). The main blocks need one split of
[references; image]: their first block gathers the two slices (one all-gather per forward, only with references)
and keeps this rank's slice of the whole; its attention runs through joint Ulysses (caption first). ``norm_out`` is
per token: its output's [references; image] part is gathered before ComfyUI keeps the image's tokens.
"""
from functools import partial

import torch

from ..parallel.attention import joint_ulysses_override, ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import gather_after_text, split_ids

FAMILY = "Omnigen 2"
MODEL_CLASSES = ("comfy.ldm.omnigen.omnigen2.OmniGen2Transformer2DModel",)
FSDP_BLOCKS = ("noise_refiner", "ref_image_refiner", "context_refiner", "layers")
HOOKS = {"split": ("noise_refiner.0", "ref_image_refiner.0"),
         "attention": ("noise_refiner.*", "ref_image_refiner.*", "layers.*"), "gather": ("norm_out",),
         "replicated": ("context_refiner.*",)}     # over the replicated caption only: ComfyUI's attention, no hook


def num_heads(diffusion_model) -> int:
    """Width over head width (RoPE spans one head), whatever the block counts."""
    return diffusion_model.hidden_size // sum(diffusion_model.rope_embedder.axes_dim)


def begin(shard: SequenceShard, parts: dict, module, args):
    shard.total = None
    parts.clear()        # tokens of "image" and "references" in this forward, set by the refiners


def refiner_pre(shard: SequenceShard, parts: dict, key: str, override, module, args, kwargs):
    """Noise / reference refiner block: (tokens, mask (None), their RoPE rows, t); the first block splits them."""
    x, mask, freqs, *rest = args
    if key not in parts:
        parts[key] = shard.total = x.shape[1]
        x = shard.split(x)
    shard.seen_block_tokens.add(x.shape[1])
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return (x, mask, shard.split(freqs), *rest), kwargs


def resplit(shard: SequenceShard, parts: dict, x: torch.Tensor) -> torch.Tensor:
    """[caption; reference slice; image slice] -> [caption; this rank's slice of [references; image]]."""
    shard.total = parts["references"]
    refs = shard.local
    caption = x.shape[1] - refs - -(-parts["image"] // shard.size)
    whole = [shard.gather(x[:, caption:caption + refs])]
    shard.total = parts["image"]
    whole.append(shard.gather(x[:, caption + refs:]))
    shard.total = parts["references"] + parts["image"]
    return torch.cat((x[:, :caption], shard.split(torch.cat(whole, dim=1))), dim=1)


def layer_pre(shard: SequenceShard, parts: dict, override, module, args, kwargs):
    """Main block: ([caption; this rank's tokens], mask (None), RoPE rows of [caption; every other token], t)."""
    x, mask, freqs, *rest = args
    if "main" not in parts:
        parts["main"] = True
        if "references" in parts:
            x = resplit(shard, parts, x)
    shard.seen_block_tokens.add(x.shape[1] - (freqs.shape[1] - shard.total))
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return (x, mask, split_ids(shard, True, module, (freqs,))[0], *rest), kwargs


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    alone, joint, parts = ulysses_override(shard, attend), joint_ulysses_override(shard, attend, text_first=True), {}
    diffusion_model.register_forward_pre_hook(partial(begin, shard, parts))
    for refiner, key in (("noise_refiner", "image"), ("ref_image_refiner", "references")):
        for block in getattr(diffusion_model, refiner):
            block.register_forward_pre_hook(partial(refiner_pre, shard, parts, key, alone), with_kwargs=True)
    for block in diffusion_model.layers:
        block.register_forward_pre_hook(partial(layer_pre, shard, parts, joint), with_kwargs=True)
    diffusion_model.norm_out.register_forward_hook(partial(gather_after_text, shard))
