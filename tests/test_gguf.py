"""GGUF checkpoints stay quantized in Tandem's workers and sample like ComfyUI on the same weights dequantized.

A tiny Wan file holds every quantization type Tandem supports (its Linears cycle through them), F16 biases, a 5-D
patch embedding stored flattened with ComfyUI-GGUF's ``orig_shape`` field, and one quantized tensor outside a Linear
(dequantized once on load). ComfyUI 0.3.75 has no GGUF loader of its own, so the single-process reference loads a
safetensors file of the values the ``gguf`` library's numpy reference dequantizes from the same blocks.
"""
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as Q
from safetensors.torch import load_file, save_file

from tandem.parallel.degrees import GroupConfig, TandemConfigError
from tandem.tests.test_lora import comfyui_sample, make_lora, with_loras
from tandem.tests.test_wan_usp import ksampler, relative, request, single_process, start_load_sample

SHAPE = (3, 6, 10)
LINEAR_TYPES = (Q.Q8_0, Q.Q6_K, Q.Q5_K, Q.Q5_0, Q.Q5_1, Q.Q4_K, Q.Q4_0, Q.Q4_1, Q.Q3_K, Q.Q2_K, Q.BF16)
# where each K-type block keeps its fp16 super-block scales (d, then dmin where it has one): byte offsets
K_SCALES = {Q.Q2_K: (80, 82), Q.Q3_K: (108,), Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,)}


def quantize(array: np.ndarray, qtype: Q, rng: np.random.Generator) -> np.ndarray:
    """``array`` in ``qtype``'s blocks. The library quantizes the legacy types only; K-type blocks are random
    bytes with small super-block scales (their values are then whatever those blocks decode to)."""
    if qtype not in K_SCALES:
        return gguf.quants.quantize(array, qtype)
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = rng.integers(0, 256, (array.size // block, size), dtype=np.uint8)
    for offset in K_SCALES[qtype]:
        scales = rng.uniform(2e-4, 1e-3, len(blocks)).astype(np.float16)
        blocks[:, offset:offset + 2] = scales.view(np.uint8).reshape(-1, 2)
    return blocks.reshape(*array.shape[:-1], -1)


def make_gguf(source: Path, directory: Path) -> tuple[Path, Path]:
    """The checkpoint ``source`` as a mixed-type GGUF, and the values a GGUF reader gets back, as safetensors."""
    writer = gguf.GGUFWriter(str(directory / "tiny_wan.gguf"), arch="wan")
    reference, rng, linears = {}, np.random.default_rng(0), 0
    for name, tensor in sorted(load_file(str(source)).items()):
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % 256 == 0 or name == "head.modulation":
            qtype = Q.Q8_0 if name == "head.modulation" else LINEAR_TYPES[linears % len(LINEAR_TYPES)]
            linears += array.ndim == 2
            blocks = quantize(array, qtype, rng)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=qtype)
            reference[name] = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).reshape(array.shape))
        elif array.ndim == 5:
            writer.add_tensor(name, array.reshape(array.shape[0], -1).astype(np.float16))
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(array.shape))
            reference[name] = torch.from_numpy(array.astype(np.float16)).float()
        elif name.endswith(".bias"):
            writer.add_tensor(name, array.astype(np.float16))
            reference[name] = torch.from_numpy(array.astype(np.float16)).float()
        else:
            writer.add_tensor(name, array)
            reference[name] = torch.from_numpy(array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    save_file({k: v.contiguous() for k, v in reference.items()}, str(directory / "tiny_wan_dequantized.safetensors"))
    return directory / "tiny_wan.gguf", directory / "tiny_wan_dequantized.safetensors"


def resident_bytes(path: Path) -> tuple[int, int]:
    """What the workers should hold of this file on CPU: quantized blocks as their bytes plus the float tensors in
    the model's fp32; and what they would hold with every tensor dequantized."""
    tensors = gguf.GGUFReader(str(path)).tensors
    floats = sum(int(t.n_elements) * 4 for t in tensors if t.tensor_type in (Q.F32, Q.F16, Q.BF16))
    blocks = sum(int(t.n_bytes) for t in tensors if t.tensor_type not in (Q.F32, Q.F16, Q.BF16))
    return blocks + floats, sum(int(t.n_elements) * 4 for t in tensors)


@pytest.fixture(scope="module")
def files(checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    return make_gguf(checkpoint("wan21_t2v"), tmp_path_factory.mktemp("gguf"))


@pytest.mark.parametrize("ulysses,fsdp", [(2, False), (1, True), (2, True)],
                         ids=["ulysses2", "fsdp2", "ulysses2+fsdp"])
def test_gguf_stays_quantized_and_equals_comfyui_on_the_dequantized_weights(_tandem_session, files, ulysses, fsdp):
    path, reference = files
    req = request("wan21_t2v", SHAPE, "euler")
    expected = single_process(str(reference), "wan21_t2v", req)
    latent, stats, (info, _) = start_load_sample(
        GroupConfig(gpu_count=2, ulysses_degree=ulysses, fsdp=fsdp, timeout_s=60), str(path), req)
    error = relative(latent, expected)
    quantized, dequantized = resident_bytes(path)
    share = quantized / (2 if fsdp else 1)     # FSDP: ≈ half each; fp32 norms and biases stay replicated
    print(f"GGUF, Ulysses {ulysses}{' + FSDP' if fsdp else ''}: {info['dtypes']}, {info['local_bytes']} bytes "
          f"resident per worker (quantized file {quantized}, dequantized {dequantized}), relative error {error:.2e}")
    assert info["model"] == "WAN21_T2V" and error < 1e-4
    assert "torch.uint8" in info["dtypes"]
    assert share * 0.95 <= info["local_bytes"] <= share * 1.25 and quantized < dequantized / 2
    if not fsdp:
        assert all(s.get("attention_calls") for s in stats)     # the tokens were split


def test_truncated_gguf_fails_in_one_line(tandem_group, files, tmp_path):
    path, _ = files
    data = path.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TandemConfigError, match=r"^truncated.gguf is not a readable GGUF file \(.*\): it is probably "
                                                r"incomplete or corrupt; download it again$"):
        tandem_group.call("load", str(truncated), "default")


def test_unsupported_quantization_names_the_type(tandem_group, tmp_path):
    path = tmp_path / "iq.gguf"
    writer = gguf.GGUFWriter(str(path), arch="wan")
    block, size = gguf.GGML_QUANT_SIZES[Q.IQ2_XXS]
    writer.add_tensor("blocks.0.ffn.0.weight", np.zeros((4, 256 // block * size), np.uint8),
                      raw_shape=(4, 256 // block * size), raw_dtype=Q.IQ2_XXS)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TandemConfigError, match=r"^[^\n]*IQ2_XXS[^\n]*Q8_0[^\n]*$"):
        tandem_group.call("load", str(path), "default")
    assert tandem_group.call("ping")


def test_lora_on_a_gguf_model(tandem_group, files, tmp_path):
    """A LoRA on a quantized layer is applied to its dequantized weight in the forward, as ComfyUI's LoRA on the
    dequantized file; taking it off again gives the plain model's result."""
    from tandem.nodes.loader import load as load_model

    path, reference = files
    req = request("wan21_t2v", SHAPE, "euler")
    loras = ((str(make_lora("wan21_t2v", tmp_path / "lora.safetensors", seed=4)), 0.9),)
    model = load_model(tandem_group, str(path))
    latent = ksampler(with_loras(model, loras), req)
    error = relative(latent, comfyui_sample(str(reference), "wan21_t2v", loras, req))
    plain = relative(ksampler(model, req), single_process(str(reference), "wan21_t2v", req))
    print(f"GGUF + LoRA: relative error {error:.2e}; without it again {plain:.2e}")
    assert error < 1e-4 and plain < 1e-4 and relative(latent, ksampler(model, req)) > 1e-3
