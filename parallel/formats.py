"""Weight formats: each reads a file's header for ComfyUI's host and opens the file for the workers' loader.

Every format ends in the same place, so one loader (``weights.materialize``) serves them all: ComfyUI's model built
on ``meta`` by its own detection, and the diffusion model's tensors as views of the file's mmap (the page cache the
host's workers share), with where they lie in the file so the loader can read them with ``preadv``. Scaled-fp8
safetensors files are safetensors to this module: ComfyUI's detection picks their ops. GGUF tensors that stay
quantized on the device are bytes here, their layers already turned into quantized ones (``parallel/quantized``).
"""
import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.model_base
import comfy.utils
import safetensors
import torch

from . import gguf, quantized
from .staging import FileRanges
from .weights import build_on_meta

SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "I64": torch.int64,
                      "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8, "BOOL": torch.bool}


@dataclass
class Opened:
    model: comfy.model_base.BaseModel       # ComfyUI's model, its diffusion model on ``meta``
    sd: dict[str, torch.Tensor]             # the diffusion model's keys -> the file's tensors (mmap views)
    ranges: FileRanges | None               # where those views lie in the file
    decode: dict[str, Callable] = field(default_factory=dict)   # keys loaded as bytes, decoded on the device


@dataclass(frozen=True)
class Format:
    header: Callable[[str], tuple[dict[str, torch.Tensor], dict | None]]   # meta stand-ins and metadata
    open: Callable[[str, dict, dict | None], Opened]                        # (path, model options, unet config)


def _safetensors_header(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    with safetensors.safe_open(path, framework="pt") as f:
        sd = {}
        for name in f.keys():
            tensor = f.get_slice(name)
            sd[name] = torch.empty(tensor.get_shape(), dtype=SAFETENSORS_DTYPES[tensor.get_dtype()], device="meta")
        return sd, f.metadata()


def _open_safetensors(path: str, options: dict, unet_config: dict | None) -> Opened:
    sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    ranges = FileRanges.safetensors(path, sd)
    return Opened(*build_on_meta(os.path.basename(path), sd, metadata, options, unet_config), ranges)


def _torch_header(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    return {k: torch.empty_like(v, device="meta") for k, v in sd.items()}, metadata


def _open_torch(path: str, options: dict, unet_config: dict | None) -> Opened:
    sd, metadata = comfy.utils.load_torch_file(path, return_metadata=True)
    return Opened(*build_on_meta(os.path.basename(path), sd, metadata, options, unet_config), None)


def _gguf_header(path: str) -> tuple[dict[str, torch.Tensor], dict | None]:
    return gguf.meta_state_dict(gguf.read(path)), None


def _open_gguf(path: str, options: dict, unet_config: dict | None) -> Opened:
    entries = gguf.read(path)
    meta = gguf.meta_state_dict(entries)
    model, processed = build_on_meta(os.path.basename(path), dict(meta), None, options, unet_config)
    by_key = {key: entries[name] for key, name in gguf.model_names(meta, processed).items()}
    decode = quantized.keep_quantized(model.diffusion_model, by_key)
    first = next(iter(entries.values()))
    ranges = FileRanges(path, first.raw.data_ptr() - first.offset)
    return Opened(model, {key: e.source() for key, e in by_key.items()}, ranges, decode)


SAFETENSORS = Format(_safetensors_header, _open_safetensors)
FORMATS = {".safetensors": SAFETENSORS, ".sft": SAFETENSORS, ".gguf": Format(_gguf_header, _open_gguf)}
TORCH_FILE = Format(_torch_header, _open_torch)     # .ckpt, .pt, .pth: whatever ComfyUI's loader reads


def identity(path: str, edge: int = 1 << 20) -> str:
    """What makes two copies of a file the same file: its size and a hash of its first and last ``edge`` bytes (the
    header, which names every tensor's place, and the tail a truncated copy lacks). Unlike the modification time it is
    the same on every host that has the file, so every worker names a model alike."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        digest.update(f.read(edge))
        f.seek(max(edge, size - edge))
        digest.update(f.read(edge))
    return f"{size}-{digest.hexdigest()[:16]}"


def format_of(path: str) -> Format:
    return FORMATS.get(os.path.splitext(path)[1].lower(), TORCH_FILE)
