"""Tandem VAE Decode / Encode equal ComfyUI's VAE Decode (Tiled) / VAE Encode (Tiled) with the same settings, with
the tiles really split over the workers. The VAE is a Wan 2.1 VAE built from ComfyUI's own class at a tiny width
(ComfyUI's VAE loader reads the width from the weights), random weights, fp32."""
import pytest
import torch

from tandem.parallel.degrees import GroupConfig
from tandem.workers import group as groups
from tandem.workers.group import TandemError


@pytest.fixture(scope="module")
def vae():
    import comfy.sd

    from tandem.tests.checkpoints import wan21_vae_state_dict

    return comfy.sd.VAE(sd=wan21_vae_state_dict())


def latent(frames: int, height: int, width: int) -> dict:
    return {"samples": torch.randn(1, 16, frames, height, width, generator=torch.Generator().manual_seed(1))}


SETTINGS = dict(tile_size=32, overlap=8, temporal_size=8, temporal_overlap=4)   # 4×4 latent tiles, 2 frames


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def test_tandem_vae_encode_equals_comfyui_tiled_encode(tandem_group, vae):
    import nodes

    from tandem.nodes.vae import TandemVAEEncode

    pixels = torch.rand(9, 40, 48, 3, generator=torch.Generator().manual_seed(2))
    settings = dict(tile_size=32, overlap=8, temporal_size=8, temporal_overlap=4)
    (expected,) = nodes.VAEEncodeTiled().encode(vae, pixels, **settings)
    (encoded,) = TandemVAEEncode().encode(tandem_group, vae, pixels, **settings)
    error = relative(encoded["samples"], expected["samples"])
    print(f"VAE encode: {encoded['samples'].shape}, tiles {[s['tiles'] for s in tandem_group.last_stats]}, "
          f"relative error {error:.2e}")
    assert encoded["samples"].shape == expected["samples"].shape and error < 1e-4
    assert all(stats["tiles"] for stats in tandem_group.last_stats)


def test_a_latent_of_another_family_fails_in_one_line(tandem_group, vae):
    from tandem.nodes.vae import TandemVAEDecode

    flux_latent = {"samples": torch.randn(1, 16, 8, 8)}
    with pytest.raises(TandemError, match=r"^this latent \(\(1, 16, 8, 8\)\) is not one this VAE decodes \(5-D with "
                                          r"16 channels\): connect the VAE of the model that made it$"):
        TandemVAEDecode().decode(tandem_group, vae, flux_latent, **SETTINGS)
    assert tandem_group.call("ping")


@pytest.mark.parametrize("workers", [2, 4])      # 2: the session's group (Ulysses 2), reused; 4: tiles only
def test_tandem_vae_decode_equals_comfyui_tiled_decode(_tandem_session, vae, workers):
    import nodes

    from tandem.nodes.vae import TandemVAEDecode

    samples = latent(5, 9, 7)          # odd sizes: 17 frames of 72 × 56 pixels
    (expected,) = nodes.VAEDecodeTiled().decode(vae, samples, **SETTINGS)
    group = groups.start(GroupConfig(gpu_count=workers, ulysses_degree=2 if workers == 2 else 1, timeout_s=60))
    (images,) = TandemVAEDecode().decode(group, vae, samples, **SETTINGS)
    tiles = [len(stats["tiles"]) for stats in group.last_stats]
    error = relative(images, expected)
    print(f"VAE decode on {workers} workers: {images.shape}, tiles per rank {tiles}, relative error {error:.2e}")
    assert images.shape == expected.shape and error < 1e-4
    assert all(tiles) and max(tiles) - min(tiles) <= 1       # every rank decoded its share, none all of them
