"""Wan 2.1 HuMo (``HumoWanModel``), Wan 2.2 S2V (``WanModel_S2V``) and Wan 2.2 Animate (``AnimateWanModel``): Wan's
split plus their per-frame audio or face attention.

Both forwards append their extra tokens before the blocks (HuMo: the reference image's frame; S2V: the reference
frame and the frame-packed motion tokens, each with its RoPE rows and, for S2V, its timestep rows), so Wan's hooks
split them with the video tokens at the first block, run self-attention through Ulysses and gather after the head.
The audio then reaches the video tokens frame by frame: HuMo's ``audio_cross_attn`` in each block lets each latent
frame's tokens attend to that frame's 16 audio tokens (ComfyUI groups the queries by frame), S2V's
``audio_injector`` after an injected block does the same over the first ``seq_len`` (video) tokens with its 4 audio
tokens and adaptive norm per frame. Animate adds its pose latents to the patch embedding (they split with the video
tokens) and, after every fifth block, a face block (``face_adapter.fuser_blocks``) in which each latent frame's tokens
attend to that frame's face tokens (ComfyUI groups the queries by frame, as HuMo's). A rank's slice starts and ends
inside frames, so these calls get the slice's video tokens laid into the whole frames they touch (zeros around them:
the queries do not see each other) with those frames' audio or face tokens, and the slice's rows are taken back out
of the result.
"""
from functools import partial

import torch

from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn
from . import wan

FAMILY = "Wan HuMo / S2V / Animate"
MODEL_CLASSES = ("comfy.ldm.wan.model.HumoWanModel", "comfy.ldm.wan.model.WanModel_S2V",
                 "comfy.ldm.wan.model_animate.AnimateWanModel")
FSDP_BLOCKS = ("blocks",)
HOOKS = {"split": ("blocks.*",), "attention": ("blocks.*.self_attn",),
         "per_frame": ("blocks.*.audio_cross_attn_wrapper.audio_cross_attn?", "audio_injector?",
                       "face_adapter.fuser_blocks.*?"), "gather": ("head",)}
HUMO_AUDIO_TOKENS = 16   # per frame: ComfyUI's WanT2VCrossAttentionGather groups the audio keys by 16

num_heads = wan.num_heads


def _framed(shard: SequenceShard, state: dict, x: torch.Tensor, video: int,
            frames: int) -> tuple[torch.Tensor, int, int]:
    """This rank's video tokens (of ``video`` in ``frames`` frames) in the whole frames they touch: (those frames'
    tokens, first frame, end frame); ``state`` keeps where the rank's rows are."""
    per_frame = video // frames
    if per_frame * frames != video:
        raise ValueError(f"{video} video tokens do not make {frames} frames")
    start = shard.rank * shard.local
    real = max(0, min(x.shape[1], video - start))    # the rest: other tokens, or the split's padding
    first = min(start // per_frame, frames - 1)
    last = max(first + 1, -(-(start + real) // per_frame))
    framed = x.new_zeros(x.shape[0], (last - first) * per_frame, x.shape[2])
    offset = start - first * per_frame
    framed[:, offset:offset + real] = x[:, :real]
    state.update(x=x, offset=offset, real=real)
    return framed, first, last


def _unframed(state: dict, out: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    base[:, :state["real"]] = out[:, state["offset"]:state["offset"] + state["real"]]
    return base


def _frames_pre(shard: SequenceShard, state: dict, rows: int, module, args, kwargs):
    """(video tokens, per-frame keys of ``rows`` rows a frame along dim 1: HuMo's audio [B, frames · 16, C], Animate's
    face tokens [B, frames, N, C]) -> the same over the frames this rank's tokens touch."""
    x, keys = args
    framed, first, last = _framed(shard, state, x, shard.total, keys.shape[1] // rows)
    return (framed, keys[:, first * rows:last * rows]), kwargs


def _frames_post(state: dict, module, args, kwargs, out):
    return _unframed(state, out, out.new_zeros(state["x"].shape))


def _injector_pre(shard: SequenceShard, state: dict, module, args):
    """(x, block id, audio [B, frames, 4, C], global audio [B, frames, 1, C], video tokens) of the whole sequence ->
    the same over the frames this rank's video tokens touch."""
    x, block_id, audio, audio_global, video = args
    state.clear()
    if module.injected_block_id.get(block_id) is None:
        return None
    framed, first, last = _framed(shard, state, x, video, audio.shape[1])
    audio_global = audio_global[:, first:last] if audio_global is not None else None
    return framed, block_id, audio[:, first:last], audio_global, framed.shape[1]


def _injector_post(state: dict, module, args, out):
    return _unframed(state, out, state["x"].clone()) if state else None


def install_sequence_parallel(diffusion_model, shard: SequenceShard, attend: AttentionFn) -> None:
    wan.install_sequence_parallel(diffusion_model, shard, attend)
    for block in diffusion_model.blocks:
        if hasattr(block, "audio_cross_attn_wrapper"):
            state, attention = {}, block.audio_cross_attn_wrapper.audio_cross_attn
            attention.register_forward_pre_hook(partial(_frames_pre, shard, state, HUMO_AUDIO_TOKENS), with_kwargs=True)
            attention.register_forward_hook(partial(_frames_post, state), with_kwargs=True)
    for face in getattr(getattr(diffusion_model, "face_adapter", None), "fuser_blocks", None) or []:
        state = {}
        face.register_forward_pre_hook(partial(_frames_pre, shard, state, 1), with_kwargs=True)
        face.register_forward_hook(partial(_frames_post, state), with_kwargs=True)
    injector = getattr(diffusion_model, "audio_injector", None)
    if injector is not None:
        state = {}
        injector.register_forward_pre_hook(partial(_injector_pre, shard, state))
        injector.register_forward_hook(partial(_injector_post, state))
