"""LoRA on Tandem's resident weights: ComfyUI computes each patched weight, the checkpoint supplies the original.

ComfyUI patches a model by backing up every weight it changes (a private copy per process) and writing the patched
one over it. Tandem's weights are the file's page cache (CPU workers), GPU tensors filled from it, or FSDP shards,
so it keeps no backup: a patched weight is computed from the file's tensor with ComfyUI's own key mapping,
``calculate_weight`` and rounding (so it equals ComfyUI's), and a weight that the next prompt no longer patches is
read from the file again. With FSDP every rank computes the whole patched tensor and keeps its dim-0 chunk.
A GGUF layer that stays quantized gets its patch list instead, applied to the dequantized weight in its forward.

The patch lists are ComfyUI's, made on the host by its own LoRA nodes (LoraLoaderModelOnly, LoraLoader's model
part) on the stand-in model, and reach the workers with the job (their tensors through shared files, once per host).
"""
import comfy.float
import comfy.lora
import comfy.model_patcher
import comfy.utils
import torch
from torch.distributed.tensor import DTensor

from . import quantized
from .fsdp import shard_of
from .weights import assign

PREFIX = "diffusion_model."


@torch.no_grad()
def set_weights(model: torch.nn.Module, sd: dict, patches: dict[str, list], keys: set[str],
                device: torch.device) -> None:
    """Give each weight in ``keys`` (names under ``model``, ``diffusion_model.…``) its value from the file ``sd``
    (the diffusion model's state dict), patched by ``patches`` where it has one. Every rank runs the same keys in
    the same order."""
    for key in sorted(keys):
        owner_name, _, attr = key.rpartition(".")
        owner = comfy.utils.get_attr(model, owner_name)
        if quantized.is_quantized(owner) and attr == "weight":
            owner.weight_patches = (patches[key], key) if key in patches else None
            continue
        weight, set_func, convert_func = comfy.model_patcher.get_key_weight(model, key)
        value = sd[key.removeprefix(PREFIX)].to(device=device, dtype=weight.dtype)
        if key in patches:
            value = _patched(value, patches[key], key, set_func, convert_func, weight.dtype)
        if isinstance(weight, DTensor):
            local = weight.to_local()
            shards, rank = shard_of(weight)
            chunks = torch.chunk(value, shards, dim=0)
            if rank < len(chunks) and local.numel():
                local.copy_(chunks[rank])
        else:   # a new tensor: a CPU worker's weight may be the file's mmap, which is never written
            assign(owner, attr, value)


def _patched(original: torch.Tensor, patches: list, key: str, set_func, convert_func, dtype: torch.dtype
             ) -> torch.Tensor:
    """ModelPatcher.patch_weight_to_device's arithmetic on one weight, returning the new value."""
    temp = original.to(torch.float32, copy=True)
    if convert_func is not None:
        temp = convert_func(temp, inplace=True)
    out = comfy.lora.calculate_weight(patches, temp, key)
    seed = comfy.model_patcher.string_to_seed(key)
    if set_func is None:
        return comfy.float.stochastic_rounding(out, dtype, seed=seed)
    return set_func(out, seed=seed, return_weight=True)
