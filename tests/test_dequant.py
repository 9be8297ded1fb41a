"""``parallel.dequant`` against the ``gguf`` library's numpy reference (``gguf.quants.dequantize``), per type.

Blocks come two ways: data quantized by ``gguf.quants.quantize`` (which gguf implements for the float and 32-value
types only), and random bytes for every quantized type (all bit patterns of the quants and packed scales), with the
fp16 scale fields overwritten by finite random fp16 values. Float32 output must equal the reference bit for bit.
"""
import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q

from tandem.parallel.degrees import TandemConfigError
from tandem.parallel.dequant import SUPPORTED, dequantize, unsupported_message

SHAPES = [(64, 512), (2, 8, 256)]
QUANTIZABLE = [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q5_1, Q.Q5_0, Q.Q4_1, Q.Q4_0]
# Byte offsets of each block's fp16 fields (scales, mins), from ggml's block structs.
FP16_FIELDS = {Q.Q8_0: [0], Q.Q5_1: [0, 2], Q.Q5_0: [0], Q.Q4_1: [0, 2], Q.Q4_0: [0],
               Q.Q6_K: [208], Q.Q5_K: [0, 2], Q.Q4_K: [0, 2], Q.Q3_K: [108], Q.Q2_K: [80, 82]}


def random_blocks(qtype: Q, shape: tuple, seed: int = 0) -> np.ndarray:
    """Random valid bytes of a ``qtype`` tensor of ``shape``, as GGUF stores it: (rows..., bytes per row)."""
    block_size, type_size = GGML_QUANT_SIZES[qtype]
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(int(np.prod(shape)) // block_size, type_size), dtype=np.uint8)
    for offset in FP16_FIELDS[qtype]:
        scale = (rng.standard_normal(len(blocks)) * 0.01).astype(np.float16)
        blocks[:, offset:offset + 2] = scale.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(*shape[:-1], shape[-1] // block_size * type_size)


def quantized_blocks(qtype: Q, shape: tuple, seed: int = 0) -> np.ndarray:
    """Random normal data of ``shape`` quantized by gguf, as bytes (gguf gives F32 and F16 as float arrays)."""
    data = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return gguf.quants.quantize(data, qtype).view(np.uint8)


def check_exact(blocks: np.ndarray, qtype: Q, shape: tuple) -> float:
    """Asserts our float32 output equals gguf's bit for bit; returns the max abs difference (0)."""
    reference = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).reshape(shape))
    out = dequantize(torch.from_numpy(blocks), qtype, shape, torch.float32)
    assert out.shape == shape and out.dtype == torch.float32
    assert torch.isfinite(reference).all() and reference.abs().max() > 0
    difference = (out - reference).abs().max().item()
    print(f"{qtype.name} {shape}: max |ours - gguf| = {difference:.3g} (max |gguf| {reference.abs().max():.3g})")
    assert torch.equal(out, reference), f"{qtype.name}: max abs difference {difference}"
    return difference


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qtype", FP16_FIELDS, ids=lambda q: q.name)
def test_random_blocks_equal_gguf(qtype, shape):
    check_exact(random_blocks(qtype, shape), qtype, shape)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("qtype", QUANTIZABLE, ids=lambda q: q.name)
def test_quantized_data_equals_gguf(qtype, shape):
    check_exact(quantized_blocks(qtype, shape), qtype, shape)


def test_supported_types():
    assert SUPPORTED >= {Q.Q8_0, Q.Q6_K, Q.Q5_K, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q4_0, Q.Q4_1, Q.Q3_K, Q.Q2_K,
                         Q.F16, Q.BF16, Q.F32}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("qtype", [Q.Q4_K, Q.Q8_0, Q.F32, Q.BF16], ids=lambda q: q.name)
def test_half_output_is_the_reference_rounded(qtype, dtype):
    shape = (2, 8, 256)
    blocks = random_blocks(qtype, shape) if qtype in FP16_FIELDS else quantized_blocks(qtype, shape)
    reference = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).reshape(shape))
    out = dequantize(torch.from_numpy(blocks), qtype, torch.Size(shape), dtype)
    assert out.shape == shape and out.dtype == dtype
    assert torch.equal(out, reference.to(dtype))


@pytest.mark.parametrize("qtype", [Q.Q6_K, Q.Q5_0, Q.BF16], ids=lambda q: q.name)
def test_any_layout_of_the_bytes(qtype):
    """(rows, bytes per row) as GGUF stores it, flat, and a non-contiguous view (rows of a wider buffer)."""
    shape = (16, 512)
    blocks = random_blocks(qtype, shape) if qtype in FP16_FIELDS else quantized_blocks(qtype, shape)
    raw = torch.from_numpy(blocks)
    wider = torch.zeros(raw.shape[0], raw.shape[1] + 6, dtype=torch.uint8)
    wider[:, 3:-3] = raw
    strided = wider[:, 3:-3]
    assert raw.dim() == 2 and not strided.is_contiguous()
    expected = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).reshape(shape))
    for layout in (raw, raw.reshape(-1), strided):
        assert torch.equal(dequantize(layout, qtype, shape, torch.float32), expected)


def test_stays_on_the_device_of_the_bytes():
    """Torch ops only: bytes on the meta device give a meta tensor (numpy or .cpu() would fail)."""
    for qtype in SUPPORTED:
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        raw = torch.empty(4, 256 // block_size * type_size, dtype=torch.uint8, device="meta")
        out = dequantize(raw, qtype, (4, 256), torch.bfloat16)
        assert out.device.type == "meta" and out.shape == (4, 256) and out.dtype == torch.bfloat16


def test_wrong_byte_count_is_refused():
    blocks = torch.from_numpy(random_blocks(Q.Q4_K, (4, 256)))
    with pytest.raises(ValueError, match="Q4_K tensor of shape"):
        dequantize(blocks[:3], Q.Q4_K, (4, 256), torch.float32)
    with pytest.raises(ValueError, match="blocks of 256 values"):
        dequantize(blocks, Q.Q4_K, (8, 128), torch.float32)


def test_unsupported_type_is_one_line_naming_the_types():
    message = unsupported_message(Q.IQ2_XXS)
    assert "\n" not in message and "IQ2_XXS" in message
    assert all(t.name in message for t in SUPPORTED)
    raw = torch.zeros(GGML_QUANT_SIZES[Q.IQ2_XXS][1], dtype=torch.uint8)
    with pytest.raises(TandemConfigError) as error:
        dequantize(raw, Q.IQ2_XXS, (1, 256), torch.float32)
    assert str(error.value) == message
