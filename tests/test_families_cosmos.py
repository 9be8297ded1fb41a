"""Cosmos Predict 2 (``MiniTrainDIT``) under Ulysses 2, Ring 2 and Ulysses 2 + FSDP equals ComfyUI's KSamplerAdvanced
in one process (fp32): a text-to-image latent of 15 tokens and a Video2World-style one of 3 frames (45 tokens) whose
first frame is kept by the noise mask, as CosmosPredict2ImageToVideoLatent sets it, so that frame's tokens get their
own timestep (one modulation row per frame, which the split cuts mid-frame). Both counts are odd: the split pads the
second rank. The model's RoPE ranges, computed when ComfyUI builds it and not saved, are computed again by Tandem's
loader (``weights.computed_buffers``), under FSDP too. The tiny file loads with its head and block count (ComfyUI's
detection fixes them only at the real widths). Tests run mode by mode, so each group starts once.
"""
import math

import pytest
import torch

from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import load_checkpoint
from tandem.tests.test_families import assert_fsdp_sharded
from tandem.tests.test_wan_usp import SampleRequest, ksampler
from tandem.workers import group as groups

FAMILY = "cosmos_predict2"
UNET = {"num_blocks": 2, "num_heads": 2}      # what detection cannot infer at the tiny width
STEPS = 2
MODES = {
    "ulysses2": GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60),
    "ring2": GroupConfig(gpu_count=2, ulysses_degree=1, ring_degree=2, timeout_s=60),
    "ulysses2+fsdp": GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, timeout_s=60),
}
SIZES = {"15-tokens-image": (1, 6, 10), "45-tokens-video+first-frame": (3, 6, 10)}   # latent frames × H × W
CASES = [(mode, size) for mode in MODES for size in SIZES]


def request(size: str) -> SampleRequest:
    """Distinct positive and negative text (12 and 7 tokens of 1024); for the video, a given first frame that the
    noise mask keeps."""
    g = torch.Generator().manual_seed(7)
    frames, height, width = SIZES[size]
    conds = [[[torch.randn(1, tokens, 1024, generator=g), {}]] for tokens in (12, 7)]
    latent = {"samples": torch.zeros(1, 16, frames, height, width)}
    if frames > 1:
        latent["samples"][:, :, 0] = torch.randn(1, 16, height, width, generator=g)
        latent["noise_mask"] = torch.ones(1, 1, frames, height, width)
        latent["noise_mask"][:, :, 0] = 0.0
    return SampleRequest(add_noise=True, noise_seed=42, steps=STEPS, cfg=5.0, sampler_name="euler",
                         scheduler="simple", positive=conds[0], negative=conds[1], latent=latent, start_at_step=0,
                         end_at_step=10000, return_with_leftover_noise=False)


_expected: dict[str, torch.Tensor] = {}


def expected(path: str, size: str) -> torch.Tensor:
    """Single-process ComfyUI's latent, computed once per size for every mode."""
    if size not in _expected:
        _expected[size] = ksampler(load_checkpoint(path, FAMILY), request(size))
    return _expected[size]


@pytest.mark.parametrize("mode,size", CASES, ids=["-".join(case) for case in CASES])
def test_cosmos_predict2_equals_single_process(_tandem_session, checkpoint, mode, size):
    from tandem.nodes.loader import load

    path = str(checkpoint(FAMILY))
    group = groups.start(MODES[mode])
    infos = group.call("load", path, "default", UNET)
    latent = ksampler(load(group, path, unet_config=UNET), request(size))
    stats, reference = group.last_stats, expected(path, size)
    error = ((latent - reference).norm() / reference.norm()).item()
    print(f"{FAMILY} {mode} {size}: relative error {error:.2e}, per-rank stats {stats}")
    assert latent.shape == reference.shape and error < 1e-4
    assert [rank_stats["rank"] for rank_stats in stats] == [0, 1]
    for rank_stats in stats:                     # each rank's blocks held its share of the tokens, never all
        assert rank_stats["block_tokens"] == [math.ceil(math.prod(SIZES[size]) // 4 / 2)]
        assert rank_stats["attention_calls"] >= 2 * STEPS      # 2 blocks, every step
    if MODES[mode].fsdp:
        assert_fsdp_sharded(FAMILY, infos)
