"""Tandem VAE Decode / Encode: ComfyUI's VAE Decode (Tiled) / VAE Encode (Tiled), with the tiles split over the
group's workers (``workers/vae``). Same inputs and defaults as ComfyUI's tiled nodes, plus the group, and the same
result as ComfyUI's node with those settings.

ComfyUI's ``nodes`` module is imported when the node runs, not with Tandem (see ``nodes/lora``)."""
from ..workers.group import Group
from ..workers.vae import DistributedVAE


def _with_group(inputs: dict) -> dict:
    return {"required": {"group": ("TANDEM_GROUP",), **inputs["required"]}}


class TandemVAEDecode:
    @classmethod
    def INPUT_TYPES(cls):
        import nodes

        return _with_group(nodes.VAEDecodeTiled.INPUT_TYPES())

    RETURN_TYPES = ("IMAGE",)
    FUNCTION = "decode"
    CATEGORY = "Tandem"
    DESCRIPTION = ("VAE Decode (Tiled) on every Tandem worker: each GPU decodes its share of the tiles, and they are "
                   "blended as ComfyUI's tiled decode blends them.")

    def decode(self, group: Group, vae, samples, tile_size, overlap=64, temporal_size=64, temporal_overlap=8):
        import nodes

        return nodes.VAEDecodeTiled().decode(DistributedVAE(group, vae), samples, tile_size, overlap, temporal_size,
                                             temporal_overlap)


class TandemVAEEncode:
    @classmethod
    def INPUT_TYPES(cls):
        import nodes

        return _with_group(nodes.VAEEncodeTiled.INPUT_TYPES())

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "encode"
    CATEGORY = "Tandem"
    DESCRIPTION = "VAE Encode (Tiled) on every Tandem worker: each GPU encodes its share of the tiles."

    def encode(self, group: Group, vae, pixels, tile_size, overlap, temporal_size=64, temporal_overlap=8):
        import nodes

        return nodes.VAEEncodeTiled().encode(DistributedVAE(group, vae), pixels, tile_size, overlap, temporal_size,
                                             temporal_overlap)
