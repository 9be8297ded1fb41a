"""Sequence-parallel adapters, one module per DiT family, matched on ComfyUI's exact diffusion-model class.

An adapter (``Adapter``) declares the ComfyUI classes it serves, by import path and exactly: a subclass with its own
forward (Wan's ``AnimateWanModel``, served by ``wan_variants``) is never claimed by its parent's adapter.
It declares where its hooks go (``HOOKS``: where the tokens are split, which calls' attention runs through
Ulysses / Ring, where they are gathered), which the contract test checks against a model built on ``meta``, so a
ComfyUI update that moves a module fails there, cheaply. Adapter modules are imported when a model is loaded, one
at a time: an adapter whose import fails (a ComfyUI without that family) is disabled alone, with its reason.
"""
import importlib
import logging
import re
from types import ModuleType
from typing import Protocol

import torch

from ..parallel.degrees import TandemConfigError
from ..parallel.fsdp import transformer_blocks
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn

ADAPTERS = ("wan", "flux", "qwen_image", "hunyuan_video", "chroma", "chroma_radiance", "lumina", "sd3", "ltxv",
            "wan_variants", "hidream", "omnigen2", "cosmos")     # modules of this package

# Models without attention over one token sequence: what Tandem offers them instead, said when Ulysses is asked for.
NO_SEQUENCE = {
    "comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel":
        "UNet models (SD1.5, SDXL) have no attention over one token sequence to split",
}


class Adapter(Protocol):
    FAMILY: str                               # the name users see
    MODEL_CLASSES: tuple[str, ...]            # ComfyUI diffusion-model classes served, by import path, exactly
    FSDP_BLOCKS: tuple[str, ...]              # attributes holding the block lists FSDP shards one block at a time
    HOOKS: dict[str, tuple[str, ...]]         # role (split, ids, attention, gather, ...) -> module paths hooked;
                                              # "*" matches every item of a list, a trailing "?" marks an optional one
                                              # role "replicated": blocks over replicated tokens only,
                                              # which keep ComfyUI's attention and get no hook

    def num_heads(self, diffusion_model: torch.nn.Module) -> int: ...

    def install_sequence_parallel(self, diffusion_model: torch.nn.Module, shard: SequenceShard,
                                  attend: AttentionFn) -> None: ...


def class_path(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def loaded_adapters() -> dict[str, ModuleType | str]:
    """Each adapter module by name, or why it could not be imported."""
    adapters = {}
    for name in ADAPTERS:
        try:
            adapters[name] = importlib.import_module(f"{__name__}.{name}")
        except ImportError as e:
            logging.warning("Tandem: the %s adapter is disabled: %s", name, e)
            adapters[name] = f"{type(e).__name__}: {e}"
    return adapters


def _serving(diffusion_model: torch.nn.Module) -> ModuleType | None:
    path = class_path(type(diffusion_model))
    for adapter in loaded_adapters().values():
        if not isinstance(adapter, str) and path in adapter.MODEL_CLASSES:
            return adapter
    return None


def adapter_for(diffusion_model: torch.nn.Module) -> Adapter:
    """The adapter serving this exact ComfyUI model class, or a one-line error saying what runs it instead."""
    adapter = _serving(diffusion_model)
    if adapter is not None:
        return adapter
    name = type(diffusion_model).__name__
    reason = NO_SEQUENCE.get(class_path(type(diffusion_model)))
    if reason is not None:
        raise TandemConfigError(f"{reason}: set Ulysses degree and Ring degree to 1 for {name}; CFG-parallel, FSDP "
                                "and data parallel work with it")
    supported = ", ".join(a.FAMILY for a in loaded_adapters().values() if not isinstance(a, str))
    raise TandemConfigError(
        f"Tandem's sequence parallelism does not support {name} models yet (supported: {supported}): set Ulysses "
        "degree and Ring degree to 1 for this model; CFG-parallel, FSDP and data parallel (GPU count above "
        "CFG × Ulysses × Ring) work with any ComfyUI model.")


def fsdp_blocks(diffusion_model: torch.nn.Module) -> list[torch.nn.Module]:
    """What FSDP shards block by block: the family's block lists, or, for a model without an adapter (FSDP works with
    any ComfyUI model), the items of every top-level ModuleList."""
    adapter = _serving(diffusion_model)
    if adapter is None:
        return transformer_blocks(diffusion_model)
    lists = [getattr(diffusion_model, name, None) for name in adapter.FSDP_BLOCKS]
    return [block for blocks in lists if blocks is not None for block in blocks]


def hook_targets(adapter: Adapter, diffusion_model: torch.nn.Module) -> dict[str, list[str]]:
    """Role -> the module names ``adapter.HOOKS`` resolves to in this model; a required path that matches nothing
    raises ``LookupError`` naming it."""
    names = [name for name, _ in diffusion_model.named_modules()]
    targets = {}
    for role, paths in adapter.HOOKS.items():
        targets[role] = []
        for path in paths:
            pattern = path.rstrip("?").replace(".", r"\.").replace("*", r"\d+")
            found = [n for n in names if re.fullmatch(pattern, n)]
            if not found and not path.endswith("?"):
                raise LookupError(f"{adapter.FAMILY} adapter: {type(diffusion_model).__name__} has no {path}")
            targets[role] += found
    return targets
