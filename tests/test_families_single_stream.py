"""Lumina 2, Z-Image and SD3 under Ulysses 2, Ring 2 and Ulysses 2 + FSDP equal ComfyUI's KSamplerAdvanced in one
process (fp32), at a square latent (16 image tokens) and a non-square one (15: the split pads the second rank).

Each family's own inputs are exercised: Lumina 2's text attention masks (the caption refiner attends under them,
replicated on every rank), Z-Image's pad tokens, ScaleROPE's shifted and scaled RoPE positions and ComfyUI's
Z-Image sampling (ModelSamplingAuraFlow, shift 3). The tiny Lumina 2 / Z-Image files load with their explicit
config (ComfyUI detects the head layout only at the real widths), so the tiny Z-Image loads as ComfyUI's Lumina2
config: the ModelSampling node gives both sides the same sampling. Tests run mode by mode, so each group starts once.
"""
import math

import pytest
import torch

from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import FAMILIES, build_model
from tandem.tests.test_wan_usp import SampleRequest, ksampler
from tandem.workers import group as groups

STEPS = 3
MODES = {
    "ulysses2": GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60),
    "ring2": GroupConfig(gpu_count=2, ulysses_degree=1, ring_degree=2, timeout_s=60),
    "ulysses2+fsdp": GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, timeout_s=60),
}
SIZES = {"16-tokens": (8, 8), "15-tokens": (6, 10)}
ATTENTIONS = {"lumina2": 4, "z_image": 4}     # sequence-parallel attentions per forward (refiner + main blocks)
FAMILY_NAMES = ("lumina2", "z_image")
CASES = [(mode, family, size) for mode in MODES for family in FAMILY_NAMES for size in SIZES]


def request(family: str, size: tuple[int, int]) -> SampleRequest:
    """Distinct positive and negative text (12 and 7 tokens); Lumina 2's carry masks with padding at the end."""
    spec = FAMILIES[family]
    g = torch.Generator().manual_seed(7)
    conds = []
    for tokens, padding in ((12, 3), (7, 2)):
        extra = {}
        if "attention_mask" in spec.extra_cond:
            extra["attention_mask"] = torch.ones(1, tokens)
            extra["attention_mask"][:, tokens - padding:] = 0.0
        conds.append([[torch.randn(1, tokens, spec.context_dim, generator=g), extra]])
    return SampleRequest(add_noise=True, noise_seed=42, steps=STEPS, cfg=5.0, sampler_name="euler",
                         scheduler="simple", positive=conds[0], negative=conds[1],
                         latent={"samples": torch.zeros(1, 16, *size)}, start_at_step=0, end_at_step=10000,
                         return_with_leftover_noise=False)


def patched(model, family: str):
    """Z-Image as ComfyUI's template samples it (ModelSamplingAuraFlow shift 3), with ScaleROPE moving the grid."""
    if family != "z_image":
        return model
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow
    from comfy_extras.nodes_rope import ScaleROPE

    model = ModelSamplingAuraFlow().patch_aura(model, 3.0)[0]
    return ScaleROPE.execute(model, 1.5, 2.0, 0.5, -1.0, 1.0, 0.0)[0]


def image_tokens(family: str, size: tuple[int, int]) -> int:
    """Image tokens the blocks run on: 2×2 patches, then the model's own padding (Z-Image: a multiple of 32)."""
    tokens = math.ceil(size[0] / 2) * math.ceil(size[1] / 2)
    multiple = FAMILIES[family].unet_config.get("pad_tokens_multiple") or 1
    return -(-tokens // multiple) * multiple


_expected: dict[tuple[str, str], torch.Tensor] = {}


def expected(path: str, family: str, size: str) -> torch.Tensor:
    """Single-process ComfyUI's latent, computed once per family and size for every mode."""
    if (family, size) not in _expected:
        _expected[family, size] = single_process_patched(path, family, request(family, SIZES[size]))
    return _expected[family, size]


def single_process_patched(path: str, family: str, req: SampleRequest) -> torch.Tensor:
    from tandem.tests.checkpoints import load_checkpoint

    return ksampler(patched(load_checkpoint(path, family), family), req)


@pytest.mark.parametrize("mode,family,size", CASES, ids=["-".join(case) for case in CASES])
def test_single_stream_families_equal_single_process(_tandem_session, checkpoint, mode, family, size):
    from tandem.nodes.loader import load

    path, unet_config = str(checkpoint(family)), FAMILIES[family].unet_config
    group = groups.start(MODES[mode])
    infos = group.call("load", path, "default", unet_config)
    latent = ksampler(patched(load(group, path, unet_config=unet_config), family), request(family, SIZES[size]))
    stats, reference = group.last_stats, expected(path, family, size)
    error = ((latent - reference).norm() / reference.norm()).item()
    print(f"{family} {size} {mode}: relative error {error:.2e}, per-rank stats {stats}")
    assert latent.shape == reference.shape and error < 1e-4
    assert [rank_stats["rank"] for rank_stats in stats] == [0, 1]
    for rank_stats in stats:                     # each rank's blocks held its share of the image tokens, never all
        assert rank_stats["block_tokens"] == [math.ceil(image_tokens(family, SIZES[size]) / 2)]
        assert rank_stats["attention_calls"] >= 2 * STEPS * ATTENTIONS[family]   # positive and negative apart
    if MODES[mode].fsdp:
        total = sum(p.numel() for p in build_model(family).model.diffusion_model.parameters())
        assert all(0.45 * total <= info["local_params"] <= 0.55 * total for info in infos), infos
