"""Lumina 2 and Z-Image (ComfyUI's ``NextDiT``): split the image tokens at the first noise-refiner block, gather after
``final_layer``.

NextDiT embeds the image, builds the RoPE table for [caption; image] from the full grid (ScaleROPE's shifts and
scales included, and Z-Image's pad tokens appended to both parts), refines the caption alone (``context_refiner``,
under its text mask) and the image alone (``noise_refiner``), then runs single-stream blocks over [caption; image].
The split is therefore made where the image first enters a block: from there on each rank holds its image slice and
that slice's RoPE rows. The caption stays replicated, so its refiner keeps ComfyUI's attention; the noise refiner's
attention runs through Ulysses, the main blocks' joint attention through joint Ulysses (caption first). The final
layer is per token: its output's image part is gathered before ComfyUI's unpatchify.
"""
from functools import partial

from ..parallel.attention import joint_ulysses_override, ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import gather_after_text, split_ids

FAMILY = "Lumina 2 / Z-Image"
MODEL_CLASSES = ("comfy.ldm.lumina.model.NextDiT",)
FSDP_BLOCKS = ("noise_refiner", "context_refiner", "layers")
HOOKS = {"split": ("noise_refiner.0",), "attention": ("noise_refiner.*", "layers.*"), "gather": ("final_layer",),
         "replicated": ("context_refiner.*",)}     # over the replicated caption only: ComfyUI's attention, no hook


def num_heads(diffusion_model) -> int:
    return diffusion_model.n_heads


def _begin(shard: SequenceShard, module, args):
    shard.total = None


def _refiner_pre(shard: SequenceShard, override, module, args, kwargs):
    """Noise-refiner block: (image tokens, mask, image RoPE rows, t); the first one of a forward splits the image."""
    x, mask, freqs, *rest = args
    if shard.total is None:
        shard.total = x.shape[1]
        x = shard.split(x)
    shard.seen_block_tokens.add(x.shape[1])
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return (x, mask, shard.split(freqs), *rest), kwargs


def _layer_pre(shard: SequenceShard, override, module, args, kwargs):
    """Main block: ([caption; image slice], mask, RoPE rows of [caption; every image token], adaln)."""
    x, mask, freqs, *rest = args
    shard.seen_block_tokens.add(x.shape[1] - (freqs.shape[1] - shard.total))    # image tokens this block holds
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return (x, mask, split_ids(shard, True, module, (freqs,))[0], *rest), kwargs


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    image, joint = ulysses_override(shard, attend), joint_ulysses_override(shard, attend, text_first=True)
    diffusion_model.register_forward_pre_hook(partial(_begin, shard))
    for block in diffusion_model.noise_refiner:
        block.register_forward_pre_hook(partial(_refiner_pre, shard, image), with_kwargs=True)
    for block in diffusion_model.layers:
        block.register_forward_pre_hook(partial(_layer_pre, shard, joint), with_kwargs=True)
    diffusion_model.final_layer.register_forward_hook(partial(gather_after_text, shard))
