"""GGUF Linears that keep their quantized blocks on the device and dequantize them per layer in the forward.

A 9 GB Q4 file of Wan-14B is 28.6 GB as bf16: kept as bytes it fits a 16 GB card. A quantized weight becomes a
``uint8`` parameter of (rows, bytes per row): GGUF quantizes along the last dim, so every row holds whole blocks and
FSDP's dim-0 shards split the file on block boundaries, all-gathered as bytes and dequantized after the gather.
The layer keeps ComfyUI's class (its ops, its name for LoRA keys) with a forward that dequantizes first; a LoRA is
applied to the dequantized weight inside that forward (``weight_patches``), so no bf16 copy of the model exists.
Quantized tensors of other layers (rare: norms, embeddings) are dequantized once while loading, on the device.
"""
from collections.abc import Callable
from functools import cache, partial

import comfy.lora
import torch

from . import dequant
from .gguf import Entry


class QuantizedLinear:
    """Mixed in before a ComfyUI ops Linear class: ``quantized`` is (type, logical shape) of ``self.weight``'s bytes."""
    quantized: tuple = ()
    weight_patches: tuple | None = None      # (ComfyUI patch list, key) of the LoRA on this weight, if any

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = dequant.dequantize(self.weight, *self.quantized, x.dtype)
        if self.weight_patches is not None:
            patches, key = self.weight_patches
            weight = comfy.lora.calculate_weight(patches, weight.float(), key).to(x.dtype)
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return torch.nn.functional.linear(x, weight, bias)


@cache
def _quantized_class(cls: type) -> type:
    return type(f"Quantized{cls.__name__}", (QuantizedLinear, cls), {})


def keep_quantized(model: torch.nn.Module, entries: dict[str, Entry]) -> dict[str, Callable]:
    """Turn the Linears of ``model`` (on ``meta``) whose weight ``entries`` holds quantized into byte-holding
    quantized layers; return, for the other quantized tensors, how to dequantize their bytes once loaded."""
    decode = {}
    for name, entry in entries.items():
        if not entry.quantized:
            continue
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name)
        if attr == "weight" and isinstance(owner, torch.nn.Linear):
            owner.weight = torch.nn.Parameter(torch.empty(entry.source().shape, dtype=torch.uint8, device="meta"),
                                              requires_grad=False)
            owner.quantized = (entry.qtype, entry.shape)
            owner.__class__ = _quantized_class(type(owner))
        else:
            dtype = getattr(owner, attr).dtype
            decode[name] = partial(dequant.dequantize, qtype=entry.qtype, shape=entry.shape, dtype=dtype)
    return decode


def is_quantized(module: torch.nn.Module) -> bool:
    return isinstance(module, QuantizedLinear)
