"""Wan under Ulysses 2 (or Ring 2) on two gloo workers equals ComfyUI's KSamplerAdvanced in one process (fp32)."""
import math
from dataclasses import dataclass

import pytest
import torch

from tandem.tests.checkpoints import load_checkpoint

STEPS = 4


@dataclass
class SampleRequest:
    """KSamplerAdvanced's inputs, minus the model."""

    add_noise: bool
    noise_seed: int
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    positive: list
    negative: list
    latent: dict
    start_at_step: int
    end_at_step: int
    return_with_leftover_noise: bool


def ksampler(model, req: SampleRequest) -> torch.Tensor:
    """ComfyUI's KSamplerAdvanced node on ``model`` (under inference mode, as ComfyUI's executor runs nodes): a
    Tandem MODEL samples on its workers, any other in this process."""
    import nodes

    with torch.inference_mode():
        return nodes.KSamplerAdvanced().sample(
            model, "enable" if req.add_noise else "disable", req.noise_seed, req.steps, req.cfg, req.sampler_name,
            req.scheduler, req.positive, req.negative, req.latent, req.start_at_step, req.end_at_step,
            "enable" if req.return_with_leftover_noise else "disable")[0]["samples"]


def conditioning(family: str, frames: int, height: int, width: int) -> tuple[list, list]:
    """Distinct positive and negative text (CFG really mixes two branches); I2V adds image and CLIP-vision conds."""
    import comfy.clip_vision

    g = torch.Generator().manual_seed(7)
    positive = [[torch.randn(1, 12, 4096, generator=g), {}]]
    negative = [[torch.randn(1, 7, 4096, generator=g), {}]]
    if family == "wan21_vace":
        control = {"vace_frames": [torch.randn(1, 32, frames, height, width, generator=g)],
                   "vace_mask": [torch.rand(1, 64, frames, height, width, generator=g)], "vace_strength": [0.8]}
        for cond in (positive, negative):
            cond[0][1].update(control)
    if family == "wan21_i2v":
        mask = torch.ones(1, 1, frames, height, width)
        mask[:, :, 0] = 0.0
        image = {"concat_latent_image": torch.randn(1, 16, frames, height, width, generator=g), "concat_mask": mask,
                 "clip_vision_output": comfy.clip_vision.Output()}
        image["clip_vision_output"].penultimate_hidden_states = torch.randn(1, 257, 1280, generator=g)
        for cond in (positive, negative):
            cond[0][1].update(image)
    return positive, negative


def request(family, shape, sampler):
    positive, negative = conditioning(family, *shape)
    latent = {"samples": torch.zeros(1, 16, *shape)}
    if family == "wan22_ti2v":   # as Wan22ImageToVideoLatent: a given first frame, kept by the noise mask
        latent = {"samples": torch.zeros(1, 48, *shape), "noise_mask": torch.ones(1, 1, *shape)}
        latent["samples"][:, :, 0] = torch.randn(1, 48, *shape[1:], generator=torch.Generator().manual_seed(3))
        latent["noise_mask"][:, :, 0] = 0.0
    return SampleRequest(add_noise=True, noise_seed=42, steps=STEPS, cfg=5.0, sampler_name=sampler,
                         scheduler="simple", positive=positive, negative=negative, latent=latent, start_at_step=0,
                         end_at_step=10000, return_with_leftover_noise=False)


def single_process(path, family, req: SampleRequest) -> torch.Tensor:
    return ksampler(load_checkpoint(path, family), req)


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def tandem_sample(group, path: str, req: SampleRequest, **load) -> tuple[torch.Tensor, list[dict]]:
    """Load ``path`` in ``group`` through Tandem Model Loader's path (``load``: its ``unet_config``/``fanout``
    options) and sample ``req`` with KSamplerAdvanced on the Tandem MODEL: (latent, every rank's statistics)."""
    from tandem.nodes.loader import load as load_model

    latent = ksampler(load_model(group, path, **load), req)
    return latent, group.last_stats


def start_load_sample(config, path: str, req: SampleRequest) -> tuple[torch.Tensor, list[dict], list[dict]]:
    """Start (or reuse) ``config``'s group, load ``path`` in it and sample ``req``: (latent, statistics, load
    infos)."""
    from tandem.workers import group as groups

    group = groups.start(config)
    infos = group.call("load", path, "default")
    return (*tandem_sample(group, path, req), infos)


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
@pytest.mark.parametrize("shape", [(3, 8, 8), (3, 6, 10)], ids=["48-tokens", "45-tokens"])
@pytest.mark.parametrize("family", ["wan21_t2v", "wan21_i2v", "wan22_ti2v", "wan21_vace"])
def test_ulysses2_equals_single_process(tandem_group, checkpoint, family, shape, sampler):
    path = str(checkpoint(family))
    req = request(family, shape, sampler)
    expected = single_process(path, family, req)

    latent, (stats0, stats1) = tandem_sample(tandem_group, path, req)

    assert latent.shape == expected.shape
    error = ((latent - expected).norm() / expected.norm()).item()
    print(f"{family} {shape} {sampler}: relative error {error:.2e}")
    assert error < 1e-4

    tokens = shape[0] * (shape[1] // 2) * (shape[2] // 2)
    for stats in (stats0, stats1):                      # each rank's blocks saw half the tokens, never all
        assert stats["rows"] == 2 * STEPS                # positive and negative both, on every worker
        assert stats["block_tokens"] == [math.ceil(tokens / 2)]
        assert stats["attention_calls"] >= STEPS * 2     # every self-attention went through the all-to-all


def test_wan22_two_model_chain_equals_single_process(tandem_group, checkpoint, tmp_path):
    """Wan 2.2 A14B style: a high-noise model takes steps 0–2 and hands its noisy latent to a low-noise model for
    the rest, as two KSamplerAdvanced chained by start/end step on Tandem models; equals the same chain on ComfyUI's."""
    from tandem.tests.checkpoints import make_checkpoint

    high, low = str(checkpoint("wan21_t2v")), str(make_checkpoint("wan21_t2v", tmp_path, seed=1))
    first = request("wan21_t2v", (3, 6, 10), "euler")
    first.end_at_step, first.return_with_leftover_noise = 2, True

    def second(latent: dict) -> SampleRequest:
        return SampleRequest(**{**vars(first), "add_noise": False, "latent": latent, "start_at_step": 2,
                                "end_at_step": 10000, "return_with_leftover_noise": False})

    mid = ksampler(load_checkpoint(high, "wan21_t2v"), first)
    expected = ksampler(load_checkpoint(low, "wan21_t2v"), second({"samples": mid}))

    noisy, _ = tandem_sample(tandem_group, high, first)
    latent, _ = tandem_sample(tandem_group, low, second({"samples": noisy}))
    error = ((latent - expected).norm() / expected.norm()).item()
    print(f"Wan 2.2 two-model chain: relative error {error:.2e}")
    assert error < 1e-4


def test_cfg_parallel_equals_single_process(_tandem_session, checkpoint):
    """CFG degree 2: positive on one worker, negative on the other, predictions swapped every step."""
    from tandem.parallel.degrees import GroupConfig

    path = str(checkpoint("wan21_i2v"))
    req = request("wan21_i2v", (3, 6, 10), "dpmpp_2m")
    expected = single_process(path, "wan21_i2v", req)
    latent, (stats0, stats1), _ = start_load_sample(
        GroupConfig(gpu_count=2, ulysses_degree=1, cfg_degree=2, timeout_s=60), path, req)
    error = relative(latent, expected)
    print(f"CFG-parallel 2: relative error {error:.2e}, rows per worker {stats0['rows']}, {stats1['rows']}")
    assert error < 1e-4
    assert stats0["rows"] == stats1["rows"] == req.steps      # each worker ran one branch: one row per step


def test_ring2_equals_single_process(_tandem_session, checkpoint):
    """Ring 2 alone on a 3-head Wan, which no Ulysses degree above 1 but 3 can split: 45 tokens, the second rank's
    chunk ends in padding that must never act as a key."""
    from tandem.parallel.degrees import GroupConfig

    path = str(checkpoint("wan21_t2v_3heads"))
    req = request("wan21_t2v", (3, 6, 10), "dpmpp_2m")
    expected = single_process(path, "wan21_t2v_3heads", req)
    latent, (stats0, stats1), _ = start_load_sample(
        GroupConfig(gpu_count=2, ulysses_degree=1, ring_degree=2, timeout_s=60), path, req)
    error = relative(latent, expected)
    print(f"Ring 2: relative error {error:.2e}")
    assert error < 1e-4
    for stats in (stats0, stats1):
        assert stats["block_tokens"] == [23]
        assert stats["attention_calls"] >= STEPS * 2
