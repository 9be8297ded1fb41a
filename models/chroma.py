"""Chroma: Flux's layout with Flux's hooks (split after ``img_in``, gather after ``final_layer``, via ``joint``).

Chroma's forward is Flux's: [txt; img] joint attention in the double and single blocks (text replicated, image
tokens split, joint Ulysses text first), RoPE ids [text; image] through ``pe_embedder``. Its modulations come from
``distilled_guidance_layer`` as one vector per block for the whole sequence, so nothing else sees the token count.
A Flux ControlNet applied to Chroma adds its residuals to *every* image token (``img += add``), not to a prefix as in
Flux: each rank gets its slice, padded as its tokens are. Chroma Radiance (pixel patches, no ``img_in`` module, a
NeRF head instead of ``final_layer``) has its own adapter, ``chroma_radiance``.
"""
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import LocalControl, install_joint

FAMILY = "Chroma"
MODEL_CLASSES = ("comfy.ldm.chroma.model.Chroma",)
FSDP_BLOCKS = ("double_blocks", "single_blocks")
HOOKS = {"split": ("img_in",), "ids": ("pe_embedder",), "attention": ("double_blocks.*", "single_blocks.*"),
         "gather": ("final_layer",)}
CONTROL_KEYS = ("input", "output")     # ControlNet residual lists added to all image tokens


def num_heads(diffusion_model) -> int:
    return diffusion_model.num_heads


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    control = LocalControl(shard, CONTROL_KEYS, whole=True)
    install_joint(diffusion_model, shard, attend, text_first=True, begin=control.take, after_split=control.fill)
