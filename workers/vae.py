"""The host's side of Tandem VAE Decode / Encode: ComfyUI's tiled VAE nodes run unchanged on a stand-in VAE whose
tiled methods run on the group's workers (``parallel/tiles``).

The stand-in answers what ComfyUI's VAEDecodeTiled / VAEEncodeTiled ask a VAE for (its compression factors) from
the VAE it wraps, and ships the tiled call with that VAE's weights to the workers: tensors this large travel as files
in shared memory, written once while the VAE lives, so a VAE used prompt after prompt is written once and built in
each worker once (keyed by a name the host gives it).
"""
import uuid

import torch

from . import transport
from .group import Group, TandemError

KEY = "_tandem_key"


class DistributedVAE:
    def __init__(self, group: Group, vae):
        self.group, self.vae = group, vae
        if getattr(vae, KEY, None) is None:
            setattr(vae, KEY, uuid.uuid4().hex)

    def spacial_compression_decode(self):
        return self.vae.spacial_compression_decode()

    def spacial_compression_encode(self):
        return self.vae.spacial_compression_encode()

    def temporal_compression_decode(self):
        return self.vae.temporal_compression_decode()

    def decode_tiled(self, samples: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._run("decode", samples, kwargs)

    def encode_tiled(self, pixels: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._run("encode", pixels, kwargs)

    def _run(self, method: str, tensor: torch.Tensor, kwargs: dict) -> torch.Tensor:
        latent_dims = self.vae.latent_dim + 2
        if method == "decode" and (tensor.ndim != latent_dims or tensor.shape[1] != self.vae.latent_channels):
            raise TandemError(f"this latent ({tuple(tensor.shape)}) is not one this VAE decodes ({latent_dims}-D with "
                              f"{self.vae.latent_channels} channels): connect the VAE of the model that made it")
        files = self.group.on_this_host
        request = {"key": getattr(self.vae, KEY), "sd": self.vae.get_sd(), "method": method, "input": tensor,
                   "kwargs": kwargs, "files": files}
        results = self.group.call("vae", transport.pack(request, files=files))
        self.group.last_stats = [stats for _, stats in results]
        return transport.take(results[0][0]) if files else results[0][0]
