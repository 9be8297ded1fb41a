"""Tiled VAE decode and encode split over the group: ComfyUI's own tiled code on every rank, each VAE tile on one.

Every rank runs ComfyUI's ``VAE.decode_tiled`` / ``encode_tiled`` (its tile grid, overlaps and feathered blending)
on the whole input, but runs the VAE only on every N-th tile; for the others it hands ComfyUI zeros of the tile's
output shape. ComfyUI's blending is linear in the tiles (each tile times its mask, divided by the sum of the masks,
which every rank computes alike), so the sum of the ranks' outputs over the process group (NCCL on GPUs) is
ComfyUI's tiled result, up to the order of the additions. ComfyUI's output transform (a clamp to [0, 1]) is not
linear: it runs once, after the sum.
"""
import itertools
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.distributed as dist


def _scaled(ratio, dim: int, size: int, down: bool) -> int:
    """A tile's size in the output along ``dim``, as ComfyUI's ``tiled_scale_multidim`` computes it."""
    r = ratio[dim] if isinstance(ratio, (tuple, list)) else ratio
    if callable(r):
        return round(r(size))
    return round(size / r if down else size * r)


def tile_shape(vae, x: torch.Tensor, encode: bool) -> list[int]:
    """What the VAE makes of the tile ``x``: pixels from a latent tile, or a latent from a pixel tile."""
    spatial = x.shape[2:]
    if encode:
        ratio, channels = vae.downscale_ratio, vae.latent_channels
        if not isinstance(ratio, (tuple, list)):       # 2-D encode tiles scale by 1 / ratio (upscale path)
            return [x.shape[0], channels, *(round(s / ratio) for s in spatial)]
        return [x.shape[0], channels, *(_scaled(ratio, d, s, True) for d, s in enumerate(spatial))]
    return [x.shape[0], vae.output_channels, *(_scaled(vae.upscale_ratio, d, s, False) for d, s in enumerate(spatial))]


@contextmanager
def my_tiles(vae, method: str, rank: int, world: int, ran: list) -> Iterator[None]:
    """While inside, ``vae.first_stage_model.<method>`` runs tiles ``rank``, ``rank + world``, ... (their indices go
    to ``ran``) and returns zeros for the others, and ``vae.process_output`` passes its input through (applied after
    the sum instead)."""
    model, counter = vae.first_stage_model, itertools.count()
    own = getattr(model, method)

    def run(x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        tile = next(counter)
        if tile % world == rank:
            ran.append(tile)
            return own(x, *args, **kwargs)
        return torch.zeros(tile_shape(vae, x, method == "encode"), dtype=x.dtype, device=x.device)

    setattr(model, method, run)
    process_output, vae.process_output = vae.process_output, lambda image: image
    try:
        yield
    finally:
        delattr(model, method)
        vae.process_output = process_output


def run(vae, method: str, samples: torch.Tensor, kwargs: dict, device: torch.device
        ) -> tuple[torch.Tensor | None, list[int]]:
    """``vae.<method>_tiled(samples, **kwargs)`` over the whole group: rank 0 returns the result on ``device`` (the
    others None), every rank the tiles it ran. The VAE should blend on ``device`` (its ``output_device``)."""
    rank, world, ran = dist.get_rank(), dist.get_world_size(), []
    with my_tiles(vae, method, rank, world, ran):
        part = getattr(vae, f"{method}_tiled")(samples, **kwargs)
    summed = part.to(device).contiguous()      # NCCL reduces contiguous tensors only (the output is moved-dim)
    dist.reduce(summed, dst=0)
    if rank != 0:
        return None, ran
    return (vae.process_output(summed) if method == "decode" else summed), ran
