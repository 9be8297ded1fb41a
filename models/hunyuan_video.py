"""HunyuanVideo (1.0, 1.5, HunyuanImage 2.1): split the image tokens after ``img_in``, gather after ``final_layer``.

Built from Flux's blocks, but the joint sequence is [img; txt] (image first, also in the RoPE ids). The text token
refiner (``txt_in``) attends over text only and keeps ComfyUI's attention. The other token streams of 1.5 and Image
2.1, ByT5 glyph tokens (``txt_byt5``) and vision tokens (``clip_fea``), join the text before the blocks (and their
zero RoPE ids the text's), so they are replicated with it: the joint attention takes every token past this rank's
image slice as text, whatever its source.
"""
from functools import partial

from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .joint import install_joint

FAMILY = "HunyuanVideo"
MODEL_CLASSES = ("comfy.ldm.hunyuan_video.model.HunyuanVideo",)
FSDP_BLOCKS = ("double_blocks", "single_blocks")
HOOKS = {"split": ("img_in",), "ids": ("pe_embedder",), "attention": ("double_blocks.*", "single_blocks.*?"),
         "gather": ("final_layer",)}                  # HunyuanVideo 1.5 has no single blocks

# Inputs whose tokens the model addresses by absolute position (image tokens prepended after img_in, ControlNet
# residuals), which a split would misplace. ComfyUI has no HunyuanVideo ControlNet.
_POSITIONAL_INPUTS = ("ref_latent", "control")


def num_heads(diffusion_model) -> int:
    return diffusion_model.num_heads


def refuse_positional(module, args, kwargs) -> None:
    for name in _POSITIONAL_INPUTS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"Tandem's sequence parallelism does not support HunyuanVideo's {name} input "
                                      "yet: set Ulysses degree to 1 for this workflow")


def local_modulation(shard: SequenceShard, names: tuple[str, ...], module, args, kwargs):
    """I2V "v2 (replace)" (``guiding_frame_index``) modulates the first frame's tokens with the guiding frame's
    embedding and the rest with the timestep's: ComfyUI passes [(0, F, 0), (F, None, 1)] over the image tokens
    (then the text). This rank holds image tokens [r·L, (r+1)·L), so its first-frame tokens end at clamp(F − r·L)."""
    for name in names:
        dims = kwargs.get(name)
        if dims is not None and dims[0][0] == 0 and dims[0][1] is not None:
            first = min(max(dims[0][1] - shard.rank * shard.local, 0), shard.local)
            kwargs[name] = [(0, first, dims[0][2]), (first, None, dims[1][2])]
    return args, kwargs


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    install_joint(diffusion_model, shard, attend, text_first=False, begin=refuse_positional)
    for block in diffusion_model.double_blocks:
        block.register_forward_pre_hook(partial(local_modulation, shard, ("modulation_dims_img",)), with_kwargs=True)
    for block in diffusion_model.single_blocks:
        block.register_forward_pre_hook(partial(local_modulation, shard, ("modulation_dims",)), with_kwargs=True)
    diffusion_model.final_layer.register_forward_pre_hook(partial(local_modulation, shard, ("modulation_dims",)),
                                                          with_kwargs=True)
