"""Flux (1 dev/schnell/Kontext; Flux 2 is the same ComfyUI class): split the image tokens after ``img_in``, gather
after ``final_layer``, with the joint machinery of ``joint``.

Text tokens stay replicated; the double and single blocks' joint attention runs through joint Ulysses (text first,
as Flux concatenates [txt; img]). Kontext reference latents are appended to the image tokens before ``img_in``, so
the split covers them. ControlNet residuals are added to the first ``n`` image tokens after each double block
(``control["input"]``) and each single block (``control["output"]``): each rank gets its part of them.
"""
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import LocalControl, install_joint

FAMILY = "Flux"
MODEL_CLASSES = ("comfy.ldm.flux.model.Flux",)
FSDP_BLOCKS = ("double_blocks", "single_blocks")
HOOKS = {"split": ("img_in",), "ids": ("pe_embedder",), "attention": ("double_blocks.*", "single_blocks.*"),
         "gather": ("final_layer",)}
CONTROL_KEYS = ("input", "output")     # ControlNet residual lists added to a prefix of the image tokens


def num_heads(diffusion_model) -> int:
    return diffusion_model.num_heads


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    control = LocalControl(shard, CONTROL_KEYS)
    install_joint(diffusion_model, shard, attend, text_first=True, begin=control.take, after_split=control.fill)
