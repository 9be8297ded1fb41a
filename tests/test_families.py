"""Flux, Qwen-Image and HunyuanVideo under Ulysses 2 equal ComfyUI's KSamplerAdvanced in one process (fp32).

Image tokens are split (padded where the count is odd), text tokens replicated, and every joint attention runs
through the all-to-all, in Tandem's Ray workers, when KSamplerAdvanced samples on the Tandem MODEL. ComfyUI detects
the tiny Flux and Qwen-Image files as their family but with its fixed 24 heads, which do not fit their width, so the
workers (and the host's stand-in) get the head count explicitly.
"""
import math

import pytest
import torch

from tandem.models import fsdp_blocks
from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import FAMILIES, build_model
from tandem.tests.test_wan_usp import SampleRequest, single_process, start_load_sample, tandem_sample
from tandem.workers import group as groups

STEPS = 4
JOINT_BLOCKS = {"flux": 4, "qwen_image": 2, "hunyuan_video": 4, "hunyuan_video_i2v": 4}   # joint attentions per forward of the tiny models
HEADS = {"flux": {"num_heads": 2}, "qwen_image": {"num_attention_heads": 2}}   # what detection cannot infer


def request(family: str, size: tuple[int, ...], reference: tuple[int, ...] | None = None) -> SampleRequest:
    """Distinct positive and negative text; ``reference`` adds a Kontext / Edit reference latent of that size."""
    spec = FAMILIES[family]
    g = torch.Generator().manual_seed(7)
    extra = {"pooled_output": torch.randn(1, 768, generator=g), "guidance": 3.5}
    extra = {k: extra[k] for k in spec.extra_cond}
    if reference:
        extra["reference_latents"] = [torch.randn(1, 16, *reference, generator=g)]
    positive = [[torch.randn(1, 12, spec.context_dim, generator=g), dict(extra)]]
    negative = [[torch.randn(1, 7, spec.context_dim, generator=g), dict(extra)]]
    latent = {"samples": torch.zeros(1, 16, *size)}
    return SampleRequest(add_noise=True, noise_seed=42, steps=STEPS, cfg=5.0, sampler_name="euler",
                         scheduler="simple", positive=positive, negative=negative, latent=latent, start_at_step=0,
                         end_at_step=10000, return_with_leftover_noise=False)


def image_tokens(*sizes: tuple[int, ...]) -> int:
    """Tokens of latents of these sizes after 2×2 patches (frames are not patched)."""
    return sum(math.prod(size[:-2]) * (size[-2] // 2) * (size[-1] // 2) for size in sizes)


def assert_fsdp_sharded(family: str, infos: list[dict]) -> None:
    """Every block's parameters sharded in two; the root's too, but they stay gathered once a forward ran."""
    model = build_model(family).model.diffusion_model
    blocks = sum(p.numel() for block in fsdp_blocks(model) for p in block.parameters())
    rest = sum(p.numel() for p in model.parameters()) - blocks
    local = [info["local_params"] for info in infos]
    assert all(0.45 * (rest + blocks) <= n <= rest + 0.55 * blocks for n in local), (local, rest, blocks)


def check(latent, expected, stats, family, tokens, label) -> None:
    error = ((latent - expected).norm() / expected.norm()).item()
    print(f"{label}: relative error {error:.2e}, per-rank stats {stats}")
    assert latent.shape == expected.shape and error < 1e-4    # one latent: rank 0's, not one per rank
    assert [rank_stats["rank"] for rank_stats in stats] == [0, 1]
    for rank_stats in stats:                      # each rank's blocks saw its share of the image tokens, never all
        assert rank_stats["block_tokens"] == [math.ceil(tokens / 2)]
        assert rank_stats["attention_calls"] >= STEPS * JOINT_BLOCKS[family]   # every joint attention exchanged


CASES = {   # latent height × width, reference latent height × width
    "16-tokens": ((8, 8), None),
    "15-tokens": ((6, 10), None),
    "reference-21-tokens": ((6, 10), (6, 4)),   # Flux Kontext / Qwen-Image-Edit reference latent
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_joint_families_ulysses2_equal_single_process(tandem_group, checkpoint, family, case):
    frames = (1,) * (len(FAMILIES[family].latent_shape) - 4)    # Qwen-Image latents carry a frame axis
    size, reference = (frames + hw if hw else None for hw in CASES[case])
    path = str(checkpoint(family))
    req = request(family, size, reference)
    expected = single_process(path, family, req)
    latent, stats = tandem_sample(tandem_group, path, req, unet_config=HEADS[family])
    check(latent, expected, stats, family, image_tokens(*filter(None, (size, reference))), f"{family} {case}")


@pytest.mark.parametrize("size", [(1, 8, 8), (3, 6, 10)], ids=["16-tokens", "45-tokens"])
def test_hunyuan_video_workers_ulysses2_equal_single_process(tandem_group, checkpoint, size):
    path = str(checkpoint("hunyuan_video"))
    req = request("hunyuan_video", size)
    expected = single_process(path, "hunyuan_video", req)
    latent, stats = tandem_sample(tandem_group, path, req)
    check(latent, expected, stats, "hunyuan_video", image_tokens(size), f"hunyuan_video {size}")


def test_hunyuan_video_workers_ulysses2_fsdp_equal_single_process(_tandem_session, checkpoint):
    path = str(checkpoint("hunyuan_video"))
    req = request("hunyuan_video", (3, 6, 10))
    expected = single_process(path, "hunyuan_video", req)
    latent, stats, infos = start_load_sample(GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, timeout_s=60),
                                             path, req)
    total = sum(p.numel() for p in build_model("hunyuan_video").model.diffusion_model.parameters())
    assert all(0.45 * total <= info["local_params"] <= 0.55 * total for info in infos)   # FSDP really sharded
    check(latent, expected, stats, "hunyuan_video", image_tokens((3, 6, 10)), "hunyuan_video + FSDP")


@pytest.mark.parametrize("ulysses", [1, 2], ids=["fsdp", "ulysses2+fsdp"])
@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_joint_families_under_fsdp_equal_single_process(_tandem_session, checkpoint, family, ulysses):
    frames = (1,) * (len(FAMILIES[family].latent_shape) - 4)
    size = frames + (6, 10)
    path = str(checkpoint(family))
    req = request(family, size)
    expected = single_process(path, family, req)
    group = groups.start(GroupConfig(gpu_count=2, ulysses_degree=ulysses, fsdp=True, timeout_s=60))
    infos = group.call("load", path, "default", HEADS[family])
    latent, _ = tandem_sample(group, path, req, unet_config=HEADS[family])     # the model just loaded, reused
    error = ((latent - expected).norm() / expected.norm()).item()
    print(f"{family}, Ulysses {ulysses} + FSDP: relative error {error:.2e}")
    assert error < 1e-4
    total = sum(p.numel() for p in build_model(family).model.diffusion_model.parameters())
    assert all(0.45 * total <= info["local_params"] <= 0.55 * total for info in infos)


@pytest.mark.parametrize("case", ["15-tokens", "reference-21-tokens"])
def test_flux_ring2_equals_single_process(_tandem_session, checkpoint, case):
    """Joint attention under Ring 2: each rank attends to the replicated text K/V once, the image K/V go around."""
    size, reference = CASES[case]
    path = str(checkpoint("flux"))
    req = request("flux", size, reference)
    expected = single_process(path, "flux", req)
    group = groups.start(GroupConfig(gpu_count=2, ulysses_degree=1, ring_degree=2, timeout_s=60))
    latent, stats = tandem_sample(group, path, req, unet_config=HEADS["flux"])
    check(latent, expected, stats, "flux", image_tokens(*filter(None, (size, reference))), f"flux Ring 2 {case}")


@pytest.mark.parametrize("guidance", ["v1 (concat)", "v2 (replace)"])
def test_hunyuan_video_i2v_ulysses2_equal_single_process(tandem_group, checkpoint, guidance):
    """HunyuanVideo I2V as ComfyUI's HunyuanImageToVideo node conditions it: v1 concatenates the start frame's
    latent and a mask to the input channels; v2 writes it into the latent's first frame and modulates that frame's
    tokens apart (``guiding_frame_index``), which under the split lands on rank 0 only (15 of 45 tokens)."""
    size = (3, 6, 10)
    req = request("hunyuan_video_i2v", size)
    start = torch.randn(1, 16, 1, *size[1:], generator=torch.Generator().manual_seed(11))
    if guidance == "v1 (concat)":
        image = {"concat_latent_image": start, "concat_mask": torch.ones(1, 1, *size)}
    else:
        image = {"guiding_frame_index": 0}
        req.latent["samples"][:, :, :1] = start
    for cond in (req.positive, req.negative):
        cond[0][1].update(image)
    path = str(checkpoint("hunyuan_video_i2v"))
    expected = single_process(path, "hunyuan_video_i2v", req)
    latent, stats = tandem_sample(tandem_group, path, req)
    check(latent, expected, stats, "hunyuan_video_i2v", image_tokens(size), f"hunyuan_video_i2v {guidance}")
