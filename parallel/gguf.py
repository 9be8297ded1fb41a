"""GGUF checkpoints (llama.cpp's format, in which many Wan, Flux and Qwen-Image models are shared): read with the
``gguf`` library, each tensor dequantized when the loader asks for it.

ComfyUI detects the model from a state dict of ``meta`` tensors with the logical shapes (GGUF stores dims in
reverse order, and quantized rows as bytes). The weights then load like a safetensors file's, one tensor at a
time, so host memory holds at most the tensors in flight: quantized tensors become the model's dtype (bf16 on
GPUs) on the device, i.e. the GPU holds dequantized weights (use FSDP to split them), not the quantized blocks.
"""
import gguf
import numpy as np
import torch
from gguf import GGMLQuantizationType

from .degrees import TandemConfigError

FLOATS = {GGMLQuantizationType.F32: torch.float32, GGMLQuantizationType.F16: torch.float16,
          GGMLQuantizationType.BF16: torch.bfloat16}


def is_gguf(path: str) -> bool:
    return path.lower().endswith(".gguf")


def read(path: str) -> dict[str, "gguf.ReaderTensor"]:
    """The file's tensors by name; a file gguf cannot parse (truncated, not GGUF) is a one-line error."""
    try:
        return {t.name: t for t in gguf.GGUFReader(path).tensors}
    except Exception as e:
        raise TandemConfigError(f"{path.rsplit('/', 1)[-1]} is not a readable GGUF file ({type(e).__name__}: {e}): "
                                "it is probably incomplete or corrupt; download it again") from None


def meta_state_dict(tensors: dict[str, "gguf.ReaderTensor"]) -> dict[str, torch.Tensor]:
    """Shape-only stand-ins for detection; quantized tensors count as bf16 (what they dequantize to on a GPU)."""
    return {name: torch.empty([int(d) for d in reversed(t.shape)], device="meta",
                              dtype=FLOATS.get(t.tensor_type, torch.bfloat16)) for name, t in tensors.items()}


def dequantize(t: "gguf.ReaderTensor") -> torch.Tensor:
    """One tensor as torch (a private copy): float types as stored, quantized ones dequantized to fp32."""
    shape = [int(d) for d in reversed(t.shape)]
    if t.tensor_type == GGMLQuantizationType.BF16:
        return torch.from_numpy(np.array(t.data).view(np.int16)).view(torch.bfloat16).reshape(shape)
    if t.tensor_type in FLOATS:
        return torch.from_numpy(np.array(t.data)).reshape(shape)
    return torch.from_numpy(gguf.quants.dequantize(t.data, t.tensor_type)).reshape(shape)


class LazyStateDict(dict):
    """The model's state dict over a GGUF file: ``names`` maps each model key to its GGUF tensor, dequantized when
    read. Entries set explicitly (the loader's constructed defaults) are kept as given."""

    def __init__(self, tensors: dict[str, "gguf.ReaderTensor"], names: dict[str, str]):
        super().__init__()
        self.tensors, self.names = tensors, names

    def __contains__(self, key) -> bool:
        return dict.__contains__(self, key) or key in self.names

    def __getitem__(self, key: str) -> torch.Tensor:
        if dict.__contains__(self, key):
            return dict.__getitem__(self, key)
        return dequantize(self.tensors[self.names[key]])


def model_names(meta: dict[str, torch.Tensor], processed: dict[str, torch.Tensor]) -> dict[str, str]:
    """Model key -> GGUF name, through ComfyUI's prefix stripping and key processing (which pass the stand-ins
    through, renamed); a processed entry that is a new tensor cannot be read lazily."""
    origin = {id(t): name for name, t in meta.items()}
    unknown = [k for k, t in processed.items() if id(t) not in origin]
    if unknown:
        raise TandemConfigError(f"this model's GGUF layout needs its tensors rebuilt while loading (e.g. {unknown[0]}),"
                                " which Tandem does not do: use a safetensors file of it")
    return {k: origin[id(t)] for k, t in processed.items()}
