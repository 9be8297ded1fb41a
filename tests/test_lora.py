"""LoRA on Tandem models: the workers' patched weights equal ComfyUI's LoraLoaderModelOnly on one process.

Real LoRA files (safetensors, ComfyUI's key formats) for the tiny Wan; the reference is ComfyUI's own
``load_lora_for_models`` and KSamplerAdvanced in this process. Tandem patches its resident weights (page-cache views
on CPU, FSDP shards) from the file without a backup, so a later prompt without the LoRA must get the original
weights back.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tandem.parallel.degrees import GroupConfig, TandemConfigError
from tandem.tests.checkpoints import build_model, load_checkpoint
from tandem.tests.test_wan_usp import relative, request
from tandem.workers import group as groups

SHAPE = (3, 6, 10)


def make_lora(family: str, path: Path, seed: int, rank: int = 4, kohya: bool = False) -> Path:
    """A LoRA over every attention and FFN Linear of ``family``: ``<key>.lora_up/lora_down/alpha`` in ComfyUI's
    generic format, or kohya's ``lora_unet_<key with _>`` names."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for key, weight in build_model(family).model.state_dict().items():
        if weight.ndim != 2 or not any(part in key for part in (".self_attn.", ".cross_attn.", ".ffn.")):
            continue
        name = key.removesuffix(".weight")
        if kohya:
            name = "lora_unet_" + name.removeprefix("diffusion_model.").replace(".", "_")
        tensors[f"{name}.lora_up.weight"] = torch.randn(weight.shape[0], rank, generator=g) * 0.2
        tensors[f"{name}.lora_down.weight"] = torch.randn(rank, weight.shape[1], generator=g) * 0.2
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return path


def comfyui_sample(model_path: str, family: str, loras: tuple, req) -> torch.Tensor:
    """ComfyUI alone: its loader, LoraLoaderModelOnly's patching, KSamplerAdvanced (under inference mode, as
    ComfyUI's executor runs every node)."""
    import comfy.sd
    import comfy.utils
    import nodes

    model = load_checkpoint(model_path, family)
    for path, strength in loras:
        model = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(path), strength, 0)[0]
    with torch.inference_mode():
        return nodes.KSamplerAdvanced().sample(
            model, "enable", req.noise_seed, req.steps, req.cfg, req.sampler_name, req.scheduler, req.positive,
            req.negative, req.latent, req.start_at_step, req.end_at_step, "disable")[0]["samples"]


@pytest.fixture(scope="module")
def loras(tmp_path_factory) -> dict[str, Path]:
    directory = tmp_path_factory.mktemp("loras")
    return {"a": make_lora("wan21_t2v", directory / "a.safetensors", 1),
            "b": make_lora("wan21_t2v", directory / "b.safetensors", 2, rank=2, kohya=True)}


@pytest.mark.parametrize("layout, family", [
    ("ulysses2", "wan21_t2v"),
    ("ulysses2+fsdp", "wan21_t2v"),
    ("ulysses2+fsdp", "wan21_t2v_scaled_fp8"),
])
def test_lora_equals_comfyui_and_comes_off_again(_tandem_session, checkpoint, loras, layout, family):
    path = str(checkpoint(family))
    group = groups.start(GroupConfig(gpu_count=2, ulysses_degree=2, fsdp="fsdp" in layout, timeout_s=60))
    key = group.call("load", path, "default")[0]["key"]
    chain = ((str(loras["a"]), 0.8), (str(loras["b"]), -0.5))
    plain_request, lora_request = request("wan21_t2v", SHAPE, "euler"), request("wan21_t2v", SHAPE, "euler")
    lora_request.loras = chain

    expected_plain = comfyui_sample(path, family, (), plain_request)
    expected_lora = comfyui_sample(path, family, chain, lora_request)
    assert relative(expected_lora, expected_plain) > 0.05, "the LoRA must change the result for this test to mean anything"

    with_lora = group.call("sample", key, lora_request)[0][0]
    without = group.call("sample", key, plain_request)[0][0]
    again = group.call("sample", key, lora_request)[0][0]
    errors = [relative(with_lora, expected_lora), relative(without, expected_plain), relative(again, expected_lora)]
    print(f"{layout} {family}: LoRA {errors[0]:.1e}, LoRA off {errors[1]:.1e}, LoRA on again {errors[2]:.1e}")
    assert max(errors) < 1e-4


def test_lora_for_another_model_is_refused_and_the_group_keeps_working(tandem_group, checkpoint, tmp_path):
    path = str(checkpoint("wan21_t2v"))
    key = tandem_group.call("load", path, "default")[0]["key"]
    flux_lora = make_lora("flux", tmp_path / "flux_lora.safetensors", 3)
    req = request("wan21_t2v", SHAPE, "euler")
    req.loras = ((str(flux_lora), 1.0),)
    with pytest.raises(TandemConfigError, match=r"^LoRA 'flux_lora.safetensors' matches none of this WAN21_T2V "
                                                r"model's weights: .*pick a LoRA made for this one$"):
        tandem_group.call("sample", key, req)
    req.loras = ()
    assert tandem_group.call("sample", key, req)[0][0] is not None


def test_a_lora_file_rewritten_in_place_is_applied_anew(tandem_group, checkpoint, tmp_path):
    """Same name, new contents (a re-download or a retrained LoRA): the next prompt uses the new file."""
    path = str(checkpoint("wan21_t2v"))
    key = tandem_group.call("load", path, "default")[0]["key"]
    lora_file = tmp_path / "retrained.safetensors"
    req = request("wan21_t2v", SHAPE, "euler")
    req.loras = ((str(lora_file), 1.0),)
    results = []
    for seed in (7, 8):
        make_lora("wan21_t2v", lora_file, seed)
        results.append((tandem_group.call("sample", key, req)[0][0], comfyui_sample(path, "wan21_t2v", req.loras, req)))
    (first, first_expected), (second, second_expected) = results
    assert relative(second_expected, first_expected) > 0.05
    assert relative(first, first_expected) < 1e-4 and relative(second, second_expected) < 1e-4
