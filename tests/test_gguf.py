"""GGUF checkpoints: a Wan file quantized with the ``gguf`` library (Q8_0 and Q4_0 Linears, F32/F16 rest) loads in
Tandem's workers and samples like ComfyUI does on the same weights dequantized into a safetensors file.

ComfyUI 0.3.75 has no GGUF loader of its own, so the single-process reference loads the dequantized values (from
the same quantized blocks, by the same library); what is tested is Tandem's reading, naming, shapes and sharding.
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


def make_gguf(source: Path, directory: Path) -> tuple[Path, Path]:
    """The checkpoint ``source`` as GGUF (2-D weights whose rows split into 32-blocks quantized, alternating Q8_0
    and Q4_0; biases F16; the rest F32) and the values a GGUF reader gets back, as a safetensors reference."""
    writer = gguf.GGUFWriter(str(directory / "tiny_wan.gguf"), arch="wan")
    reference = {}
    for i, (name, tensor) in enumerate(sorted(load_file(str(source)).items())):
        array = tensor.float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0:
            qtype = (Q.Q8_0, Q.Q4_0)[i % 2]
            blocks = gguf.quants.quantize(array, qtype)
            writer.add_tensor(name, blocks, raw_shape=blocks.shape, raw_dtype=qtype)
            reference[name] = torch.from_numpy(gguf.quants.dequantize(blocks, qtype).reshape(array.shape))
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


@pytest.fixture(scope="module")
def files(checkpoint, tmp_path_factory) -> tuple[Path, Path]:
    return make_gguf(checkpoint("wan21_t2v"), tmp_path_factory.mktemp("gguf"))


@pytest.mark.parametrize("fsdp", [False, True], ids=["ulysses2", "ulysses2+fsdp"])
def test_gguf_equals_comfyui_on_the_dequantized_weights(_tandem_session, files, fsdp):
    path, reference = files
    req = request("wan21_t2v", SHAPE, "euler")
    expected = single_process(str(reference), "wan21_t2v", req)
    latent, _, (info, _) = start_load_sample(GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=fsdp, timeout_s=60),
                                             str(path), req)
    error = relative(latent, expected)
    print(f"GGUF, {'Ulysses 2 + FSDP' if fsdp else 'Ulysses 2'}: {info['model']}, {info['dtypes']}, "
          f"{info['local_params']} local parameters, relative error {error:.2e}")
    assert info["model"] == "WAN21_T2V" and error < 1e-4


def test_truncated_gguf_fails_in_one_line(tandem_group, files, tmp_path):
    path, _ = files
    data = path.read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(TandemConfigError, match=r"^truncated.gguf is not a readable GGUF file \(.*\): it is probably "
                                                r"incomplete or corrupt; download it again$"):
        tandem_group.call("load", str(truncated), "default")


def test_lora_on_a_gguf_model(tandem_group, files, tmp_path):
    """LoRA patches start from the GGUF file's dequantized tensors (the workers' lazy reader), as ComfyUI's start
    from the dequantized file."""
    from tandem.nodes.loader import load as load_model

    path, reference = files
    req = request("wan21_t2v", SHAPE, "euler")
    loras = ((str(make_lora("wan21_t2v", tmp_path / "lora.safetensors", seed=4)), 0.9),)
    latent = ksampler(with_loras(load_model(tandem_group, str(path)), loras), req)
    error = relative(latent, comfyui_sample(str(reference), "wan21_t2v", loras, req))
    print(f"GGUF + LoRA: relative error {error:.2e}")
    assert error < 1e-4
