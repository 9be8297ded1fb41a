"""What XFuser KSampler asks of every worker, and ComfyUI's own sampling path run on it."""
from dataclasses import dataclass
from typing import Callable

import comfy.sample
import torch

@dataclass
class SampleRequest:
    """KSamplerAdvanced's inputs, minus the model (each worker already holds it)."""

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

def run_ksampler(model, req: SampleRequest, callback: Callable) -> torch.Tensor:
    """ComfyUI's KSamplerAdvanced (nodes.common_ksampler) without the UI parts: same noise, same sampler."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, req.latent["samples"])
    if req.add_noise:
        noise = comfy.sample.prepare_noise(latent_image, req.noise_seed, req.latent.get("batch_index"))
    else:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    return comfy.sample.sample(
        model, noise, req.steps, req.cfg, req.sampler_name, req.scheduler, req.positive, req.negative,
        latent_image, denoise=1.0, disable_noise=not req.add_noise, start_step=req.start_at_step,
        last_step=req.end_at_step, force_full_denoise=not req.return_with_leftover_noise,
        noise_mask=req.latent.get("noise_mask"), callback=callback, disable_pbar=True, seed=req.noise_seed)
