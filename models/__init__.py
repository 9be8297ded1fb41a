"""One adapter per DiT family, found by ComfyUI's diffusion-model class.

An adapter module provides MODEL_CLASSES, FAMILY, FSDP_BLOCKS (the names of the model's block lists, whose items FSDP
wraps one by one), ``num_heads(diffusion_model)`` and ``install_sequence_parallel(diffusion_model, shard, attend)``.
"""
from types import ModuleType

import torch

from ..parallel.degrees import TandemConfigError
from ..parallel.fsdp import transformer_blocks
from . import flux, hunyuan_video, qwen_image, wan

ADAPTERS: tuple[ModuleType, ...] = (wan, flux, qwen_image, hunyuan_video)


def adapter_for(diffusion_model) -> ModuleType:
    """The adapter for this ComfyUI model, or a one-line error listing what sequence parallelism supports."""
    for adapter in ADAPTERS:
        if isinstance(diffusion_model, adapter.MODEL_CLASSES):
            return adapter
    supported = ", ".join(a.FAMILY for a in ADAPTERS)
    raise TandemConfigError(
        f"Tandem's sequence parallelism does not support {type(diffusion_model).__name__} models yet "
        f"(supported: {supported}): set Ulysses degree and Ring degree to 1 for this model; "
        "FSDP and data parallel (GPU count above CFG × Ulysses × Ring) work with any ComfyUI model.")


def fsdp_blocks(diffusion_model) -> list[torch.nn.Module]:
    """What FSDP shards block by block: the family's block lists, or, for a model without an adapter (FSDP works with
    any ComfyUI model), the items of every top-level ModuleList."""
    for adapter in ADAPTERS:
        if isinstance(diffusion_model, adapter.MODEL_CLASSES):
            lists = [getattr(diffusion_model, name, None) for name in adapter.FSDP_BLOCKS]
            return [block for blocks in lists if blocks is not None for block in blocks]
    return transformer_blocks(diffusion_model)
