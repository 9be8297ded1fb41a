"""LoRA on Tandem models: the workers' patched weights equal ComfyUI's LoraLoaderModelOnly on one process.

Real LoRA files (safetensors, ComfyUI's key formats) for the tiny Wan; the LoRA is applied with ComfyUI's own
``load_lora_for_models`` on both sides: on the Tandem MODEL (its patch lists travel to the workers with the job)
and, for the reference, on ComfyUI's model in this process, sampled by KSamplerAdvanced. Tandem patches its resident
weights (page-cache views on CPU, FSDP shards) from the file without a backup, so a later prompt without the LoRA
must get the original weights back.
"""
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from tandem.parallel.degrees import GroupConfig, TandemError
from tandem.tests.checkpoints import build_model, load_checkpoint
from tandem.tests.test_wan_usp import ksampler, relative, request
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


def with_loras(model, loras: tuple):
    """``model`` with ``loras`` ((path, strength), ... in order) applied as LoraLoaderModelOnly applies them, the
    file read now: works on ComfyUI's models and on Tandem's alike."""
    import comfy.sd
    import comfy.utils

    for path, strength in loras:
        model = comfy.sd.load_lora_for_models(model, None, comfy.utils.load_torch_file(str(path)), strength, 0)[0]
    return model


def comfyui_sample(model_path: str, family: str, loras: tuple, req) -> torch.Tensor:
    """ComfyUI alone: its loader, LoraLoaderModelOnly's patching, KSamplerAdvanced (under inference mode, as
    ComfyUI's executor runs every node)."""
    import nodes

    model = with_loras(load_checkpoint(model_path, family), loras)
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
    """LoRA, then no LoRA, then the LoRA again, all on one resident model: the second needs the original weights
    back in the workers, the third the patched ones again."""
    from tandem.nodes.loader import load as load_model

    path = str(checkpoint(family))
    group = groups.start(GroupConfig(gpu_count=2, ulysses_degree=2, fsdp="fsdp" in layout, timeout_s=60))
    plain = load_model(group, path)
    chain = ((str(loras["a"]), 0.8), (str(loras["b"]), -0.5))
    patched = with_loras(plain, chain)
    req = request("wan21_t2v", SHAPE, "euler")

    expected_plain = comfyui_sample(path, family, (), req)
    expected_lora = comfyui_sample(path, family, chain, req)
    assert relative(expected_lora, expected_plain) > 0.05, "the LoRA must change the result for this test to mean anything"

    with_lora = ksampler(patched, req)
    without = ksampler(plain, req)
    again = ksampler(patched, req)
    errors = [relative(with_lora, expected_lora), relative(without, expected_plain), relative(again, expected_lora)]
    print(f"{layout} {family}: LoRA {errors[0]:.1e}, LoRA off {errors[1]:.1e}, LoRA on again {errors[2]:.1e}")
    assert max(errors) < 1e-4


def test_lora_for_another_model_is_refused_and_the_group_keeps_working(tandem_group, checkpoint, tmp_path):
    import folder_paths

    from tandem.nodes.loader import load as load_model
    from tandem.nodes.lora import TandemLoraLoader

    path = str(checkpoint("wan21_t2v"))
    model = load_model(tandem_group, path)
    make_lora("flux", tmp_path / "flux_lora.safetensors", 3)
    folder_paths.add_model_folder_path("loras", str(tmp_path))
    try:
        with pytest.raises(TandemError, match=r"^LoRA 'flux_lora.safetensors' matches none of this WAN21_T2V "
                                              r"model's weights: .*pick a LoRA made for this one$"):
            TandemLoraLoader().load_lora_model_only(model, "flux_lora.safetensors", 1.0)
    finally:
        folder_paths.folder_names_and_paths["loras"][0].remove(str(tmp_path))
    req = request("wan21_t2v", SHAPE, "euler")
    assert ksampler(model, req).shape == req.latent["samples"].shape


def test_a_lora_file_rewritten_in_place_is_applied_anew(tandem_group, checkpoint, tmp_path):
    """Same name, new contents (a re-download or a retrained LoRA): the next prompt uses the new file."""
    from tandem.nodes.loader import load as load_model

    path = str(checkpoint("wan21_t2v"))
    model = load_model(tandem_group, path)
    lora_file = tmp_path / "retrained.safetensors"
    req = request("wan21_t2v", SHAPE, "euler")
    loras = ((str(lora_file), 1.0),)
    results = []
    for seed in (7, 8):
        make_lora("wan21_t2v", lora_file, seed)
        results.append((ksampler(with_loras(model, loras), req), comfyui_sample(path, "wan21_t2v", loras, req)))
    (first, first_expected), (second, second_expected) = results
    assert relative(second_expected, first_expected) > 0.05
    assert relative(first, first_expected) < 1e-4 and relative(second, second_expected) < 1e-4
