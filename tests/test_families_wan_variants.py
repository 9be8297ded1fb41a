"""Wan's subclasses with their own forward under Ulysses 2, Ring 2 and Ulysses 2 + FSDP equal ComfyUI's
KSamplerAdvanced in one process (fp32), at odd token counts (45, S2V 133: the split pads the second rank), each with
its own input: Wan 2.2 Fun Camera (``CameraWanModel``) with the WanCameraEmbedding node's Plücker embedding (added to
the tokens before the split); Wan 2.1 HuMo (``HumoWanModel``) with audio features as WanHuMoImageToVideo passes them
(per-frame audio cross-attention in every block, over frames a rank's slice cuts mid-frame) and a reference image
(its frame of tokens and RoPE rows appended before the blocks); Wan 2.2 S2V (``WanModel_S2V``) with
WanSoundImageToVideo's inputs: audio features (injected per frame after block 0, over frames a rank's slice cuts
mid-frame), a control video, a reference image and 19 frames of reference motion (frame-packed into extra tokens
with their own RoPE rows and timesteps); Wan 2.2 Animate (``AnimateWanModel``) with WanAnimateToVideo's inputs: the
reference and background latents with their mask, pose latents (added to the patch embedding before the split) and
a 512 × 512 face video (its face tokens attended per frame after block 0, over frames a rank's slice cuts
mid-frame). Tests run mode by mode, so each group starts once; single-process results are computed once.
"""
import math

import pytest
import torch

from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import load_checkpoint
from tandem.tests.test_families import assert_fsdp_sharded
from tandem.tests.test_wan_usp import SampleRequest, ksampler
from tandem.workers import group as groups

STEPS = 2
FAMILY_STEPS = {"wan22_animate": 1}   # Animate's face encoder costs seconds per frame on a CPU: one step
MODES = {   # in the suite the previous file leaves Ulysses 2 running: it goes first
    "ulysses2": GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60),
    "ring2": GroupConfig(gpu_count=2, ulysses_degree=1, ring_degree=2, timeout_s=60),
    "ulysses2+fsdp": GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, timeout_s=60),
}
# latent frames × H × W (tokens: 2 × 2 patches): Camera 3 × 15 = 45; HuMo 2 × 15 video + 15 reference = 45; S2V
# 3 × 25 video + 25 reference + 33 motion (25 + 4 + 4: its packer's last frame, 2 frames at 1/2 and 16 at 1/4) = 133;
# Animate (1 reference + 2 video frames) × 15 = 45
LATENTS = {"wan22_camera": (3, 6, 10), "wan21_humo": (2, 6, 10), "wan22_s2v": (3, 10, 10),
           "wan22_animate": (3, 6, 10)}
TOKENS = {"wan22_camera": 45, "wan21_humo": 45, "wan22_s2v": 133, "wan22_animate": 45}
CASES = [(mode, family) for mode in MODES for family in LATENTS]


def request(family: str, extra: bool = True) -> SampleRequest:
    """Distinct positive and negative text; with ``extra``, the family's own conditioning on both, as its ComfyUI
    node sets it (HuMo: audio features on the positive, zeros on the negative; the reference image likewise)."""
    g = torch.Generator().manual_seed(7)
    frames, height, width = LATENTS[family]
    positive, negative = ({}, {})
    if extra and family == "wan22_camera":
        from comfy_extras.nodes_camera_trajectory import WanCameraEmbedding

        camera = WanCameraEmbedding.execute("Pan Left", width * 8, height * 8, (frames - 1) * 4 + 1).args[0]
        assert camera.shape == (1, 24, frames, height * 8, width * 8)
        positive = negative = {"camera_conditions": camera}
    if extra and family == "wan21_humo":
        audio = torch.randn(1, frames, 8, 5, 1280, generator=g)          # [B, latent frames, window, layers, C]
        reference = torch.randn(1, 16, 1, height, width, generator=g)
        positive = {"audio_embed": audio, "reference_latents": [reference]}
        negative = {"audio_embed": torch.zeros_like(audio), "reference_latents": [torch.zeros_like(reference)]}
    if extra and family == "wan22_s2v":
        audio = torch.randn(1, 25, 1024, frames * 4, generator=g)          # [B, encoder layers, C, video frames]
        shared = {"reference_latents": [torch.randn(1, 16, 1, height, width, generator=g)],
                  "reference_motion": torch.randn(1, 16, 19, height, width, generator=g),
                  "control_video": torch.randn(1, 16, frames, height, width, generator=g)}
        positive = {"audio_embed": audio, **shared}
        negative = {"audio_embed": audio * 0.0, **shared}
    if extra and family == "wan22_animate":   # as WanAnimateToVideo for 5 video frames: latents of the reference
        mask = torch.ones(1, 4, frames, height, width)     # frame and the 2 video frames, mask 0 on the reference
        mask[:, :, 0] = 0.0
        # one face frame (its motion encoder costs seconds per 512 × 512 frame on a CPU): face tokens for the first
        # video frame, which the split cuts mid-frame; ComfyUI pads the other frames' with zeros
        face = torch.rand(1, 3, 1, 512, 512, generator=g) * 2 - 1
        shared = {"concat_latent_image": torch.randn(1, 16, frames, height, width, generator=g), "concat_mask": mask,
                  "pose_video_latent": torch.randn(1, 16, frames - 1, height, width, generator=g)}
        positive = {"face_video_pixels": face, **shared}
        negative = {"face_video_pixels": face * 0.0 - 1.0, **shared}
    conds = [[[torch.randn(1, tokens, 4096, generator=g), values]]
             for tokens, values in ((12, positive), (7, negative))]
    return SampleRequest(add_noise=True, noise_seed=42, steps=FAMILY_STEPS.get(family, STEPS), cfg=5.0,
                         sampler_name="euler", scheduler="simple", positive=conds[0], negative=conds[1],
                         latent={"samples": torch.zeros(1, 16, frames, height, width)}, start_at_step=0,
                         end_at_step=10000, return_with_leftover_noise=False)


_expected: dict[tuple[str, bool], torch.Tensor] = {}


def expected(path: str, family: str, extra: bool = True) -> torch.Tensor:
    """Single-process ComfyUI's latent, computed once per family for every mode."""
    if (family, extra) not in _expected:
        _expected[family, extra] = ksampler(load_checkpoint(path, family), request(family, extra))
    return _expected[family, extra]


@pytest.mark.parametrize("mode,family", CASES, ids=["-".join(case) for case in CASES])
def test_wan_variants_equal_single_process(_tandem_session, checkpoint, mode, family):
    from tandem.nodes.loader import load

    path = str(checkpoint(family))
    group = groups.start(MODES[mode])
    infos = group.call("load", path, "default", None)
    latent = ksampler(load(group, path), request(family))
    stats, reference = group.last_stats, expected(path, family)
    error = ((latent - reference).norm() / reference.norm()).item()
    print(f"{family} {mode}: relative error {error:.2e}, per-rank stats {stats}")
    assert latent.shape == reference.shape and error < 1e-4
    assert [rank_stats["rank"] for rank_stats in stats] == [0, 1]
    for rank_stats in stats:                     # each rank's blocks held its share of the tokens, never all
        assert rank_stats["block_tokens"] == [math.ceil(TOKENS[family] / 2)]
        assert rank_stats["attention_calls"] >= 2 * FAMILY_STEPS.get(family, STEPS) * 2   # ≥ 2 blocks, 2 branches
    if MODES[mode].fsdp:
        assert_fsdp_sharded(family, infos)


@pytest.mark.parametrize("family", LATENTS)
def test_the_variants_own_input_matters(checkpoint, family):
    """The equalities above exercise each variant's own input (camera embedding; audio, reference, S2V's motion and
    control video): without it, single-process ComfyUI's result moves well beyond the tolerance."""
    path = str(checkpoint(family))
    plain, reference = expected(path, family, extra=False), expected(path, family)
    error = ((plain - reference).norm() / reference.norm()).item()
    print(f"{family}: without its own input the result moves by {error:.2e}")
    assert error > 1e-3
