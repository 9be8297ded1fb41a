"""Wan 2.1 VAE decode: ComfyUI's VAE Decode, VAE Decode (Tiled) and Tandem VAE Decode (the same tiles on N GPUs).

    python bench/vae.py [--sizes 832x480x81,1280x720x81] [--gpus 1]

A random-weight Wan 2.1 VAE built from ComfyUI's own class at its real width (ComfyUI picks its dtype, bf16 on an
H200), random latents. The tiled runs use VAE Decode (Tiled)'s default settings (tile 512, overlap 64, temporal
size 64, temporal overlap 8), converted to latent units as that node converts them (``nodes`` itself needs PyAV,
which the GPU machines lack). Each decode runs twice; the second is timed (the first loads the VAE).
Prints a Markdown table: seconds, peak VRAM (ComfyUI's process; Tandem's busiest worker), error vs the tiled decode.
ComfyUI's VAE Decode falls back to its own tiled decode (256-pixel tiles) when it runs out of memory, as it logs.
"""
import argparse
import time
import zlib

import torch

from _tandem import import_tandem
from matrix import parse_size


def random_wan21_vae():
    import comfy.ldm.wan.vae
    import comfy.sd

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in comfy.ldm.wan.vae.WanVAE(
            dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0).state_dict().items()}
    sd = {}
    for name, shape in shapes.items():      # norm scales near 1, weights N(0, 1 / fan-in): finite activations
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
        fan_in = max(1, noise[0].numel()) if noise.ndim > 1 else 1
        sd[name] = 1 + 0.02 * noise if name.endswith("gamma") else noise * (0.02 if noise.ndim == 1 else fan_in ** -0.5)
    return comfy.sd.VAE(sd=sd)


def tiled_settings(vae, tile_size=512, overlap=64, temporal_size=64, temporal_overlap=8) -> dict:
    """VAE Decode (Tiled)'s conversion of its inputs to ``VAE.decode_tiled``'s (ComfyUI 0.3.75 ``nodes.py``)."""
    if tile_size < overlap * 4:
        overlap = tile_size // 4
    if temporal_size < temporal_overlap * 2:
        temporal_overlap = temporal_overlap // 2
    temporal = vae.temporal_compression_decode()
    temporal_size = max(2, temporal_size // temporal)
    temporal_overlap = max(1, min(temporal_size // 2, temporal_overlap // temporal))
    spatial = vae.spacial_compression_decode()
    return dict(tile_x=tile_size // spatial, tile_y=tile_size // spatial, overlap=overlap // spatial,
                tile_t=temporal_size, overlap_t=temporal_overlap)


def timed(decode) -> tuple[torch.Tensor, float, float]:
    decode()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out = decode()
    torch.cuda.synchronize()
    return out, time.perf_counter() - start, torch.cuda.max_memory_allocated() / 2**30


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="832x480x81,1280x720x81")
    p.add_argument("--gpus", default="1", help="GPU counts for Tandem VAE Decode")
    args = p.parse_args()
    import_tandem()
    from tandem.parallel.degrees import GroupConfig
    from tandem.workers import group as groups
    from tandem.workers.vae import DistributedVAE

    import comfy.model_management

    gpus = [int(n) for n in args.gpus.split(",")]
    groups.start(GroupConfig(gpu_count=gpus[0], ulysses_degree=1))   # before this process holds GPU memory
    vae = random_wan21_vae()
    print("| size | decode | s | peak VRAM GB | rel. err vs tiled |\n|---|---|---|---|---|")
    for size in args.sizes.split(","):
        w, h, f = parse_size(size)
        latent = torch.randn(1, 16, (f - 1) // 4 + 1, h // 8, w // 8, generator=torch.Generator().manual_seed(0))
        settings = tiled_settings(vae)
        tiled, seconds, vram = timed(lambda: vae.decode_tiled(latent, **settings))
        full, full_s, full_vram = timed(lambda: vae.decode(latent))
        reference = tiled.float().cpu()
        error = lambda x: ((x.float().cpu() - reference).norm() / reference.norm()).item()   # noqa: E731
        print(f"| {size} | ComfyUI VAE Decode | {full_s:.2f} | {full_vram:.1f} | {error(full):.1e} |")
        print(f"| {size} | ComfyUI VAE Decode (Tiled) | {seconds:.2f} | {vram:.1f} | 0 |", flush=True)
        del full, tiled
        comfy.model_management.unload_all_models()
        torch.cuda.empty_cache()               # hand the workers what ComfyUI's decodes held
        for n in gpus:
            group = groups.start(GroupConfig(gpu_count=n, ulysses_degree=1))
            distributed = DistributedVAE(group, vae)
            out, s, _ = timed(lambda: distributed.decode_tiled(latent, **settings))
            peak = max(stats.get("peak_vram_gb", 0) for stats in group.last_stats)
            print(f"| {size} | Tandem VAE Decode, {n} GPU{'s' if n > 1 else ''} | {s:.2f} | {peak:.1f} | "
                  f"{error(out):.1e} |", flush=True)
    groups.shutdown()


if __name__ == "__main__":
    main()
