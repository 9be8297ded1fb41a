"""One adapter per DiT family, found by ComfyUI's diffusion-model class.

An adapter module provides MODEL_CLASSES, FAMILY, ``num_heads(diffusion_model)`` and
``install_sequence_parallel(diffusion_model, shard, attend)``.
"""
from types import ModuleType

from ..parallel.degrees import TandemConfigError
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
        "FSDP alone works with any ComfyUI model.")
