"""Wan 2.1 HuMo (``HumoWanModel``): Wan's split plus its per-frame audio cross-attention.

The forward appends the reference image's tokens (and their RoPE rows) before the blocks, so Wan's hooks split them
with the video tokens at the first block, run self-attention through Ulysses and gather after the head. Each block's
``audio_cross_attn`` then lets every latent frame's tokens attend to that frame's 16 audio tokens only (ComfyUI
reshapes the queries into one group per frame). A rank's slice starts and ends inside frames, so that attention gets
the slice laid into the whole frames it touches (zeros around it: queries do not see each other) with those frames'
audio tokens, and the slice's own rows are taken back out of its result.
"""
from functools import partial

from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from . import wan

FAMILY = "Wan HuMo"
MODEL_CLASSES = ("comfy.ldm.wan.model.HumoWanModel",)
FSDP_BLOCKS = ("blocks",)
HOOKS = {"split": ("blocks.*",), "attention": ("blocks.*.self_attn",),
         "audio": ("blocks.*.audio_cross_attn_wrapper.audio_cross_attn",), "gather": ("head",)}
AUDIO_TOKENS = 16   # per frame: ComfyUI's WanT2VCrossAttentionGather groups the audio keys by 16

num_heads = wan.num_heads


def _audio_pre(shard: SequenceShard, state: dict, module, args, kwargs):
    """(this rank's normed tokens, every frame's audio tokens) -> (the whole frames they touch, those frames' audio)."""
    x, audio = args
    frames = audio.shape[1] // AUDIO_TOKENS
    per_frame = shard.total // frames
    if per_frame * frames != shard.total:
        raise ValueError(f"HuMo audio: {shard.total} tokens do not make {frames} frames")
    start = shard.rank * shard.local
    real = max(0, min(shard.local, shard.total - start))      # past the end: the split's padding
    first = min(start // per_frame, frames - 1)
    last = max(first + 1, -(-(start + real) // per_frame))
    framed = x.new_zeros(x.shape[0], (last - first) * per_frame, x.shape[2])
    offset = start - first * per_frame
    framed[:, offset:offset + real] = x[:, :real]
    state.update(offset=offset, real=real, local=x.shape[1])
    return (framed, audio[:, first * AUDIO_TOKENS:last * AUDIO_TOKENS]), kwargs


def _audio_post(state: dict, module, args, kwargs, out):
    local = out.new_zeros(out.shape[0], state["local"], out.shape[2])
    local[:, :state["real"]] = out[:, state["offset"]:state["offset"] + state["real"]]
    return local


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    wan.install_sequence_parallel(diffusion_model, shard, attend)
    for block in diffusion_model.blocks:
        state = {}
        attention = block.audio_cross_attn_wrapper.audio_cross_attn
        attention.register_forward_pre_hook(partial(_audio_pre, shard, state), with_kwargs=True)
        attention.register_forward_hook(partial(_audio_post, state), with_kwargs=True)
