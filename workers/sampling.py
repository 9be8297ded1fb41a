"""What XFuser KSampler asks of every worker, and ComfyUI's own sampling path run on it."""
from dataclasses import dataclass
from collections.abc import Callable

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
    loras: tuple[tuple[str, float], ...] = ()     # (file, strength) in the order the LoRA nodes apply them


def run_ksampler(model, req: SampleRequest, callback: Callable, rows: list[int] | None = None) -> torch.Tensor:
    """ComfyUI's KSamplerAdvanced (nodes.common_ksampler) without the UI parts: same noise, same sampler.

    ``rows`` picks batch rows (data parallel) after the noise was drawn for the whole batch."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, req.latent["samples"])
    if req.add_noise:
        noise = comfy.sample.prepare_noise(latent_image, req.noise_seed, req.latent.get("batch_index"))
    else:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    mask = req.latent.get("noise_mask")
    if rows is not None:
        batch = latent_image.shape[0]
        latent_image, noise = latent_image[rows], noise[rows]
        mask = mask[rows] if mask is not None and mask.shape[0] == batch else mask
    return comfy.sample.sample(
        model, noise, req.steps, req.cfg, req.sampler_name, req.scheduler, req.positive, req.negative,
        latent_image, denoise=1.0, disable_noise=not req.add_noise, start_step=req.start_at_step,
        last_step=req.end_at_step, force_full_denoise=not req.return_with_leftover_noise,
        noise_mask=mask, callback=callback, disable_pbar=True, seed=req.noise_seed)


def gather_latent(results: list[tuple[torch.Tensor | None, dict]]) -> torch.Tensor:
    """The whole batch from every worker's ``sample`` result: each replica's leader holds its rows, in rank order."""
    return torch.cat([samples for samples, _ in results if samples is not None])
