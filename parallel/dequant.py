"""GGUF (llama.cpp) quantized tensors dequantized with torch ops, on whichever device holds their bytes.

A GGUF model can stay quantized on the GPU, with each layer's weights dequantized just before that layer uses them
(how ComfyUI-GGUF runs such models): the GPU holds 2-8 bits per weight instead of 16. Doing the arithmetic in torch
makes it run wherever the weight is (the GPU in a forward, the CPU in tests), over all blocks of a tensor at once.

Layouts are ggml's, as ``gguf.quants`` reads them: a row is split into blocks of ``block_size`` values, each stored
in ``type_size`` bytes holding fp16 scales and bit-packed integer quants. Values are computed in float32 in the
reference's order of operations, so they equal ``gguf.quants.dequantize`` exactly, then cast to the dtype asked for.
"""
import math

import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from .degrees import TandemConfigError


def _half(b: torch.Tensor) -> torch.Tensor:
    """(blocks, 2) bytes holding one fp16 each -> (blocks, 1) float32."""
    return b.contiguous().view(torch.float16).float()


def _unpack(b: torch.Tensor, bits: int) -> torch.Tensor:
    """(..., k) bytes -> (..., 8 // bits, k) fields of ``bits`` bits, the lowest-order field first."""
    shifts = torch.arange(0, 8, bits, dtype=torch.uint8, device=b.device).view(-1, 1)
    return (b.unsqueeze(-2) >> shifts) & ((1 << bits) - 1)


def _nibbles(qs: torch.Tensor) -> torch.Tensor:
    """(blocks, 16) bytes -> (blocks, 32) 4-bit quants: the low nibbles are values 0-15, the high ones 16-31."""
    return _unpack(qs, 4).reshape(qs.shape[0], 32)


def _high_bits(qh: torch.Tensor) -> torch.Tensor:
    """(blocks, 4) bytes (a little-endian uint32) -> (blocks, 32) bits, bit j for value j."""
    return _unpack(qh.unsqueeze(-1), 1).reshape(qh.shape[0], 32)


def _q8_0(blocks: torch.Tensor) -> torch.Tensor:
    """d (fp16), 32 int8 quants: d * q."""
    d, qs = blocks.split([2, 32], dim=1)
    return qs.view(torch.int8).float() * _half(d)


def _q4_0(blocks: torch.Tensor) -> torch.Tensor:
    """d, 16 bytes of 4-bit quants: d * (q - 8)."""
    d, qs = blocks.split([2, 16], dim=1)
    return _half(d) * (_nibbles(qs).float() - 8)


def _q4_1(blocks: torch.Tensor) -> torch.Tensor:
    """d, m, 16 bytes of 4-bit quants: d * q + m."""
    d, m, qs = blocks.split([2, 2, 16], dim=1)
    return _half(d) * _nibbles(qs).float() + _half(m)


def _q5_0(blocks: torch.Tensor) -> torch.Tensor:
    """d, 4 bytes of 5th bits, 16 bytes of low 4 bits: d * (q - 16)."""
    d, qh, qs = blocks.split([2, 4, 16], dim=1)
    q = _nibbles(qs) | (_high_bits(qh) << 4)
    return _half(d) * (q.float() - 16)


def _q5_1(blocks: torch.Tensor) -> torch.Tensor:
    """d, m, 4 bytes of 5th bits, 16 bytes of low 4 bits: d * q + m."""
    d, m, qh, qs = blocks.split([2, 2, 4, 16], dim=1)
    q = _nibbles(qs) | (_high_bits(qh) << 4)
    return _half(d) * q.float() + _half(m)


def _q2_k(blocks: torch.Tensor) -> torch.Tensor:
    """16 bytes of (4-bit min, 4-bit scale) per 16 values, 64 bytes of 2-bit quants, d, dmin:
    d * scale * q - dmin * min. Each 32 bytes of quants hold 128 values, 2 bits of each byte per 32 values."""
    n = blocks.shape[0]
    scales, qs, d, dmin = blocks.split([16, 64, 2, 2], dim=1)
    scale = (_half(d) * (scales & 0xF).float()).view(n, 16, 1)
    low = (_half(dmin) * (scales >> 4).float()).view(n, 16, 1)
    q = _unpack(qs.view(n, 2, 32), 2).reshape(n, 16, 16).float()
    return (scale * q - low).view(n, 256)


def _q3_k(blocks: torch.Tensor) -> torch.Tensor:
    """32 bytes of 3rd bits, 64 bytes of low 2 bits, 12 bytes of 6-bit signed scales per 16 values, d:
    d * (scale - 32) * (q - 4), where a set 3rd bit means "no -4". The scales' low 4 bits are nibbles of bytes
    0-7 (low nibbles first), their high 2 bits the 2-bit fields of bytes 8-11 (lowest field first)."""
    n = blocks.shape[0]
    hmask, qs, scales, d = blocks.split([32, 64, 12, 2], dim=1)
    low = _unpack(scales[:, :8], 4).reshape(n, 16)
    high = _unpack(scales[:, 8:], 2).reshape(n, 16)
    scale = (_half(d) * (((high << 4) | low).float() - 32)).view(n, 16, 1)
    ql = _unpack(qs.view(n, 2, 32), 2).reshape(n, 16, 16)
    minus4 = (_unpack(hmask, 1) ^ 1).reshape(n, 16, 16)
    return (scale * (ql.float() - 4 * minus4.float())).view(n, 256)


def _k_scales(scales: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Q4_K/Q5_K's 12 bytes -> 8 6-bit scales and 8 6-bit mins as float32 (blocks, 8, 1). Bytes 0-3 hold scales
    0-3 and bytes 4-7 mins 0-3 in their low 6 bits; scales and mins 4-7 take their low 4 bits from the nibbles of
    bytes 8-11 (scales low, mins high) and their high 2 bits from the top of bytes 0-3 and 4-7 respectively."""
    n = scales.shape[0]
    sc, mn, extra = scales.view(n, 3, 4).unbind(1)
    scale = torch.cat([sc & 0x3F, (extra & 0xF) | ((sc >> 2) & 0x30)], dim=1)
    low = torch.cat([mn & 0x3F, (extra >> 4) | ((mn >> 2) & 0x30)], dim=1)
    return scale.float().view(n, 8, 1), low.float().view(n, 8, 1)


def _q4_k(blocks: torch.Tensor) -> torch.Tensor:
    """d, dmin, 12 bytes of scales and mins per 32 values, 128 bytes of 4-bit quants: d * scale * q - dmin * min.
    Each 32 bytes of quants hold 64 values: low nibbles first, then high."""
    n = blocks.shape[0]
    d, dmin, scales, qs = blocks.split([2, 2, 12, 128], dim=1)
    scale, low = _k_scales(scales)
    q = _unpack(qs.view(n, 4, 32), 4).reshape(n, 8, 32).float()
    return (_half(d).view(n, 1, 1) * scale * q - _half(dmin).view(n, 1, 1) * low).view(n, 256)


def _q5_k(blocks: torch.Tensor) -> torch.Tensor:
    """Q4_K with a 5th bit per value: 32 bytes whose bit i is the 5th bit of values 32 i to 32 i + 31."""
    n = blocks.shape[0]
    d, dmin, scales, qh, qs = blocks.split([2, 2, 12, 32, 128], dim=1)
    scale, low = _k_scales(scales)
    q = (_unpack(qs.view(n, 4, 32), 4).reshape(n, 8, 32) | (_unpack(qh, 1) << 4)).float()
    return (_half(d).view(n, 1, 1) * scale * q - _half(dmin).view(n, 1, 1) * low).view(n, 256)


def _q6_k(blocks: torch.Tensor) -> torch.Tensor:
    """128 bytes of low 4 bits, 64 bytes of high 2 bits, 16 int8 scales per 16 values, d: d * scale * (q - 32).
    Each half of the block (128 values) takes 64 low-bit bytes (low nibbles first) and 32 high-bit bytes."""
    n = blocks.shape[0]
    ql, qh, scales, d = blocks.split([128, 64, 16, 2], dim=1)
    low = _unpack(ql.view(n, 2, 64), 4).reshape(n, 8, 32)
    high = _unpack(qh.view(n, 2, 32), 2).reshape(n, 8, 32)
    scale = (_half(d) * scales.view(torch.int8).float()).view(n, 16, 1)
    q = ((high << 4) | low).float().view(n, 16, 16) - 32
    return (scale * q).view(n, 256)


FLOATS = {Q.F32: torch.float32, Q.BF16: torch.bfloat16, Q.F16: torch.float16}
BLOCKS = {Q.Q8_0: _q8_0, Q.Q6_K: _q6_k, Q.Q5_K: _q5_k, Q.Q5_1: _q5_1, Q.Q5_0: _q5_0, Q.Q4_K: _q4_k,
          Q.Q4_1: _q4_1, Q.Q4_0: _q4_0, Q.Q3_K: _q3_k, Q.Q2_K: _q2_k}
SUPPORTED = frozenset(FLOATS) | frozenset(BLOCKS)


def unsupported_message(qtype: Q) -> str:
    names = ", ".join(t.name for t in [*FLOATS, *BLOCKS])
    return (f"this GGUF holds {qtype.name} tensors, which Tandem cannot dequantize: use a file quantized as one of "
            f"{names} (or safetensors)")


def dequantize(raw: torch.Tensor, qtype: Q, shape: torch.Size | tuple, dtype: torch.dtype) -> torch.Tensor:
    """The tensor of logical ``shape`` (torch order) whose GGUF bytes of type ``qtype`` are ``raw`` (uint8, any
    shape, any device), as ``dtype`` on raw's device. F32/F16/BF16 bytes are reinterpreted (a view of raw when
    ``dtype`` is the stored one); quantized blocks are dequantized in float32 and cast."""
    if qtype not in SUPPORTED:
        raise TandemConfigError(unsupported_message(qtype))
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    count = math.prod(shape)
    if raw.dtype != torch.uint8 or shape[-1] % block_size or raw.numel() != count // block_size * type_size:
        raise ValueError(f"{qtype.name} tensor of shape {tuple(shape)} needs {count // block_size * type_size} "
                         f"uint8 bytes in blocks of {block_size} values along its last dim; got {raw.numel()} "
                         f"{raw.dtype} elements")
    if qtype in FLOATS:
        return raw.reshape(-1).view(FLOATS[qtype]).reshape(shape).to(dtype)
    return BLOCKS[qtype](raw.reshape(-1, type_size)).reshape(shape).to(dtype)
