"""HunyuanVideo (1.0, 1.5, HunyuanImage 2.1): split the image tokens after ``img_in``, gather after ``final_layer``.

Built from Flux's blocks, but the joint sequence is [img; txt] (image first, also in the RoPE ids). The text token
refiner (``txt_in``) attends over text only and keeps ComfyUI's attention.
"""
from comfy.ldm.hunyuan_video.model import HunyuanVideo

from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from .flux import install_joint

MODEL_CLASSES = (HunyuanVideo,)
FAMILY = "HunyuanVideo"
FSDP_BLOCKS = ("double_blocks", "single_blocks")   # ModuleLists whose items FSDP shards one by one

# Inputs whose tokens the model addresses by absolute position (frame-wise modulation, image tokens prepended
# after img_in, ControlNet residuals), which a split would misplace. ComfyUI has no HunyuanVideo ControlNet.
_POSITIONAL_INPUTS = ("guiding_frame_index", "ref_latent", "control")


def num_heads(diffusion_model: HunyuanVideo) -> int:
    return diffusion_model.num_heads


def refuse_positional(module, args, kwargs) -> None:
    for name in _POSITIONAL_INPUTS:
        if kwargs.get(name) is not None:
            raise NotImplementedError(f"Tandem's sequence parallelism does not support HunyuanVideo's {name} input "
                                      "yet: set Ulysses degree to 1 for this workflow")


def install_sequence_parallel(diffusion_model: HunyuanVideo, shard: SequenceShard, attend: AttentionFn) -> None:
    install_joint(diffusion_model, shard, attend, text_first=False, begin=refuse_positional)
