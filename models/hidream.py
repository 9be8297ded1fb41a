"""HiDream-I1 / E1 (ComfyUI's ``HiDreamImageTransformer2DModel``): split the image tokens after ``x_embedder``, gather
after ``final_layer``, with the joint machinery of ``joint``.

HiDream patchifies the latent (E1's edit image is concatenated along the width before that, so it is part of the
same token grid and the split covers it) and embeds it with ``x_embedder``: from there on each rank holds its image
slice. The RoPE ids are [image; text] (the text's all zero) and embedded after ``x_embedder``, so ``pe_embedder``
gets this rank's image ids and every text id. The text stays replicated: the T5 tokens and the Llama-3 layer that
each block adds (``caption_projection.i`` projects layer ``llama_layers[i]`` for block i) are whole on every rank.
Double-stream blocks attend over [image; text] (image first, as HiDream's attention processor concatenates them) and
single-stream blocks over one [image; T5 + Llama; this block's Llama] tensor: both through joint Ulysses, text last.
The MoE feed-forwards need no exchange: the gate is a softmax and top-k per token, so a token is routed to the same
experts whichever rank holds it. ``final_layer`` is per token: its output is gathered before unpatchify.
"""
from functools import partial

from ..parallel.attention import joint_ulysses_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import gather_tokens, joint_block, split_ids, split_tokens

FAMILY = "HiDream"
MODEL_CLASSES = ("comfy.ldm.hidream.model.HiDreamImageTransformer2DModel",)
FSDP_BLOCKS = ("double_stream_blocks", "single_stream_blocks")
HOOKS = {"split": ("x_embedder",), "ids": ("pe_embedder",),
         "attention": ("double_stream_blocks.*", "single_stream_blocks.*"), "gather": ("final_layer",)}


def num_heads(diffusion_model) -> int:
    return diffusion_model.num_attention_heads


def begin(shard: SequenceShard, module, args):
    shard.total = None


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    override = joint_ulysses_override(shard, attend, text_first=False)
    diffusion_model.register_forward_pre_hook(partial(begin, shard))
    diffusion_model.x_embedder.register_forward_hook(partial(split_tokens, shard))
    diffusion_model.pe_embedder.register_forward_pre_hook(partial(split_ids, shard, False))
    for block in diffusion_model.double_stream_blocks:     # called with keywords: image_tokens= is the image stream
        block.register_forward_pre_hook(partial(joint_block, shard, override, "image_tokens"), with_kwargs=True)
    for block in diffusion_model.single_stream_blocks:     # image_tokens= holds [image; text] here
        block.register_forward_pre_hook(partial(joint_block, shard, override, None), with_kwargs=True)
    diffusion_model.final_layer.register_forward_hook(partial(gather_tokens, shard))
