"""GGUF checkpoints (llama.cpp's format, in which many Wan, Flux and Qwen-Image models are shared), kept quantized.

The ``gguf`` library parses the header; every tensor is then a torch view of the file's mmap (the page cache all
workers share), so GGUF loads through the same staging and fan-out as safetensors: quantized tensors travel as
their bytes and stay bytes on the device (``parallel/quantized`` dequantizes them per layer in the forward, with
``parallel/dequant``). Float tensors (F32, F16, BF16) are views of their dtype, cast on the device like any file's.

ComfyUI detects the model from ``meta`` stand-ins with the logical shapes: GGUF stores dims in reverse order,
quantized rows as bytes, and tools that cannot store 5-D tensors (Wan's patch embedding) record the real shape
in a ``comfy.gguf.orig_shape.<name>`` field, as ComfyUI-GGUF's converter does.
"""
from dataclasses import dataclass

import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType

from . import dequant
from .degrees import TandemConfigError

FLOATS = {GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16,
          GGMLQuantizationType.BF16: torch.bfloat16}
ORIG_SHAPE = "comfy.gguf.orig_shape."


@dataclass
class Entry:
    """One GGUF tensor: its bytes (a view of the file's mmap), type, logical shape and place in the file."""
    raw: torch.Tensor
    qtype: GGMLQuantizationType
    shape: torch.Size
    offset: int

    @property
    def quantized(self) -> bool:
        return self.qtype not in FLOATS

    def source(self) -> torch.Tensor:
        """What the loader reads: quantized rows as bytes (logical rows × bytes per row), floats as their dtype."""
        if self.quantized:
            return self.raw.view(*self.shape[:-1], -1) if len(self.shape) > 1 else self.raw
        return self.raw.view(FLOATS[self.qtype]).view(self.shape)


def is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def read(path: str) -> dict[str, Entry]:
    """The file's tensors by name; a file gguf cannot parse (truncated, not GGUF) or holding a type Tandem cannot
    dequantize is a one-line error."""
    try:
        reader = gguf.GGUFReader(path, "c")    # copy-on-write: writable views, never written, no copy
    except Exception as e:
        raise TandemConfigError(f"{path.rsplit('/', 1)[-1]} is not a readable GGUF file ({type(e).__name__}: {e}): "
                                "it is probably incomplete or corrupt; download it again") from None
    entries = {}
    for t in reader.tensors:
        if t.tensor_type not in dequant.SUPPORTED:
            raise TandemConfigError(dequant.unsupported_message(t.tensor_type))
        field = reader.fields.get(ORIG_SHAPE + t.name)
        shape = [int(d) for d in field.contents()] if field else [int(d) for d in reversed(t.shape)]
        raw = torch.from_numpy(np.asarray(t.data).reshape(-1).view(np.uint8))
        entries[t.name] = Entry(raw, t.tensor_type, torch.Size(shape), int(t.data_offset))
    return entries


def meta_state_dict(entries: dict[str, Entry]) -> dict[str, torch.Tensor]:
    """Shape-only stand-ins for detection; quantized tensors count as bf16 (what they compute in on a GPU)."""
    return {name: torch.empty(e.shape, device="meta", dtype=FLOATS.get(e.qtype, torch.bfloat16))
            for name, e in entries.items()}


def model_names(meta: dict[str, torch.Tensor], processed: dict[str, torch.Tensor]) -> dict[str, str]:
    """Model key -> GGUF name, through ComfyUI's prefix stripping and key processing (which pass the stand-ins
    through, renamed); a processed entry that is a new tensor cannot be read from the file."""
    origin = {id(t): name for name, t in meta.items()}
    unknown = [k for k, t in processed.items() if id(t) not in origin]
    if unknown:
        raise TandemConfigError(f"this model's GGUF layout needs its tensors rebuilt while loading (e.g. {unknown[0]}),"
                                " which Tandem does not do: use a safetensors file of it")
    return {k: origin[id(t)] for k, t in processed.items()}
