"""Tandem's nodes in a real ComfyUI server, through /prompt: the same latent as ComfyUI's own sampler, one-line
errors for bad models, and a group that survives them.

The server runs its own Ray and Tandem group (2 CPU workers on gloo). Every prompt here uses the same Tandem Init
settings, so ComfyUI's cache (Tandem Init's IS_CHANGED) reuses that one group; the shutdown test runs last.
"""
import itertools
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from tandem.tests.server import ComfyServer, ServerError

INIT_SETTINGS = {"gpu_count": 2, "ulysses_degree": 2, "timeout_s": 60}
SAMPLER = {"add_noise": "enable", "steps": 4, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
           "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}
_seeds = itertools.count(1000)   # a fresh seed per check, so ComfyUI's cache cannot skip the sampling


@pytest.fixture(scope="module")
def init_node(comfy_server: ComfyServer) -> dict:
    """Tandem Init with its /object_info defaults (combos: the default or first choice) and INIT_SETTINGS."""
    inputs = {}
    for name, spec in comfy_server.object_info()["TandemInit"]["input"]["required"].items():
        options = spec[1] if len(spec) > 1 else {}
        inputs[name] = options.get("default", spec[0][0] if isinstance(spec[0], list) else None)
    return {"class_type": "TandemInit", "inputs": {**inputs, **INIT_SETTINGS}}


@pytest.fixture(scope="module")
def install(comfy_server: ComfyServer, checkpoint):
    """``install(family)`` links the family's tiny checkpoint into the server's diffusion_models; returns its name."""
    def get(family: str) -> str:
        link = comfy_server.diffusion_models_dir / checkpoint(family).name
        if not link.exists():
            link.symlink_to(checkpoint(family))
        return link.name
    return get


def tandem_prompt(init_node: dict, unet_name: str, size: tuple[int, int, int], seed: int, prefix: str,
                  single_process: bool = False) -> dict:
    """Init → Loader → XFuser KSampler → SaveLatent; with ``single_process``, also UNETLoader → KSamplerAdvanced
    on the same conditioning and latent (distinct positive and negative, so CFG really mixes two branches)."""
    width, height, length = size
    common = {**SAMPLER, "noise_seed": seed, "positive": ["pos", 0], "negative": ["neg", 0],
              "latent_image": ["latent", 0]}
    prompt = {
        "init": init_node,
        "load": {"class_type": "TandemModelLoader",
                 "inputs": {"group": ["init", 0], "unet_name": unet_name, "weight_dtype": "default"}},
        "pos": {"class_type": "TandemTestConditioning", "inputs": {"seed": 1, "tokens": 12, "width": 4096}},
        "neg": {"class_type": "TandemTestConditioning", "inputs": {"seed": 2, "tokens": 7, "width": 4096}},
        "latent": {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": width, "height": height, "length": length, "batch_size": 1}},
        "tandem": {"class_type": "XFuserKSamplerAdvanced", "inputs": {"model": ["load", 0], **common}},
        "save_tandem": {"class_type": "SaveLatent", "inputs": {"samples": ["tandem", 0],
                                                               "filename_prefix": f"{prefix}_tandem"}},
    }
    if single_process:
        prompt |= {
            "unet": {"class_type": "UNETLoader", "inputs": {"unet_name": unet_name, "weight_dtype": "default"}},
            "single": {"class_type": "KSamplerAdvanced", "inputs": {"model": ["unet", 0], **common}},
            "save_single": {"class_type": "SaveLatent", "inputs": {"samples": ["single", 0],
                                                                   "filename_prefix": f"{prefix}_single"}},
        }
    return prompt


def saved_latent(server: ComfyServer, entry: dict, node_id: str) -> torch.Tensor:
    """A SaveLatent output read back as ComfyUI's LoadLatent reads it (files without the version key are scaled)."""
    file = entry["outputs"][node_id]["latents"][0]
    tensors = load_file(str(server.output_dir / file["subfolder"] / file["filename"]))
    scale = 1.0 if "latent_format_version_0" in tensors else 1.0 / 0.18215
    return tensors["latent_tensor"].float() * scale


def cached_nodes(entry: dict) -> list[str]:
    return next(data["nodes"] for event, data in entry["status"]["messages"] if event == "execution_cached")


@pytest.mark.parametrize("size,tokens", [((32, 32, 9), 12), ((48, 16, 9), 9)], ids=["12-tokens", "9-tokens-odd"])
def test_tandem_equals_single_process(comfy_server, install, init_node, size, tokens):
    name = install("wan21_t2v")
    entry = comfy_server.wait(comfy_server.post_prompt(
        tandem_prompt(init_node, name, size, seed=42, prefix=f"equal_{tokens}", single_process=True)))
    tandem, single = saved_latent(comfy_server, entry, "save_tandem"), saved_latent(comfy_server, entry, "save_single")

    _, _, frames, height, width = single.shape        # Wan patchifies (1, 2, 2): one token per 2×2 latent pixels
    assert frames * (height // 2) * (width // 2) == tokens
    assert tandem.shape == single.shape and single.std() > 0.1
    error = ((tandem - single).norm() / single.norm()).item()
    print(f"{size}: {tokens} tokens, relative error {error:.2e}")
    assert error < 1e-4


def with_lora(prompt: dict, lora_name: str, strength: float) -> dict:
    """Tandem LoRA Loader between the Loader and XFuser KSampler; LoraLoaderModelOnly on the single-process side."""
    prompt["lora"] = {"class_type": "TandemLoraLoader",
                      "inputs": {"model": ["load", 0], "lora_name": lora_name, "strength_model": strength}}
    prompt["tandem"]["inputs"]["model"] = ["lora", 0]
    if "single" in prompt:
        prompt["unet_lora"] = {"class_type": "LoraLoaderModelOnly",
                               "inputs": {"model": ["unet", 0], "lora_name": lora_name, "strength_model": strength}}
        prompt["single"]["inputs"]["model"] = ["unet_lora", 0]
    return prompt


def test_lora_node_equals_lora_loader_model_only(comfy_server, install, init_node):
    from tandem.tests.test_lora import make_lora

    lora = make_lora("wan21_t2v", comfy_server.loras_dir / "tiny_wan_lora.safetensors", seed=5)
    prompt = tandem_prompt(init_node, install("wan21_t2v"), (32, 32, 9), next(_seeds), "lora", single_process=True)
    entry = comfy_server.wait(comfy_server.post_prompt(with_lora(prompt, lora.name, 0.7)))
    tandem, single = saved_latent(comfy_server, entry, "save_tandem"), saved_latent(comfy_server, entry, "save_single")
    error = ((tandem - single).norm() / single.norm()).item()
    print(f"Tandem LoRA Loader vs LoraLoaderModelOnly: relative error {error:.2e}")
    assert error < 1e-4


def test_lora_for_another_model_fails_in_one_line(comfy_server, install, init_node):
    from tandem.tests.test_lora import make_lora

    lora = make_lora("flux", comfy_server.loras_dir / "flux_lora.safetensors", seed=6)
    prompt = tandem_prompt(init_node, install("wan21_t2v"), (32, 32, 9), next(_seeds), "bad_lora")
    error = comfy_server.wait_error(comfy_server.post_prompt(with_lora(prompt, lora.name, 1.0)), timeout=120)
    message = error["exception_message"].strip()
    print(f"{error['node_type']}: {message}")
    assert "\n" not in message and message.startswith("LoRA 'flux_lora.safetensors' matches none of this WAN21_T2V")
    assert_group_still_samples(comfy_server, install, init_node, cached=True)


def test_gguf_model_is_listed_and_samples(comfy_server, checkpoint, init_node, tmp_path):
    """Tandem Model Loader lists GGUF files of diffusion_models (Load Diffusion Model does not) and samples them as
    ComfyUI samples the same weights dequantized."""
    from tandem.tests.test_gguf import make_gguf

    gguf_file, reference = make_gguf(checkpoint("wan21_t2v"), tmp_path)
    for path in (gguf_file, reference):
        (comfy_server.diffusion_models_dir / path.name).symlink_to(path)
    info = comfy_server.object_info()
    assert gguf_file.name in info["TandemModelLoader"]["input"]["required"]["unet_name"][0]
    assert gguf_file.name not in info["UNETLoader"]["input"]["required"]["unet_name"][0]
    prompt = tandem_prompt(init_node, gguf_file.name, (32, 32, 9), next(_seeds), "gguf", single_process=True)
    prompt["unet"]["inputs"]["unet_name"] = reference.name
    entry = comfy_server.wait(comfy_server.post_prompt(prompt))
    tandem, single = saved_latent(comfy_server, entry, "save_tandem"), saved_latent(comfy_server, entry, "save_single")
    error = ((tandem - single).norm() / single.norm()).item()
    print(f"GGUF through Tandem Model Loader vs UNETLoader on the dequantized file: relative error {error:.2e}")
    assert error < 1e-4


def test_unlisted_model_is_rejected_by_comfyui(comfy_server, install, init_node):
    """A name not in the folder never reaches Tandem: ComfyUI's validation rejects the prompt with a 400."""
    prompt = tandem_prompt(init_node, "no_such_model.safetensors", (32, 32, 9), next(_seeds), "unlisted")
    with pytest.raises(ServerError) as rejected:
        comfy_server.post_prompt(prompt)
    assert rejected.value.code == 400
    (error,) = rejected.value.body["node_errors"]["load"]["errors"]
    print(f"ComfyUI: {error['message']}: {error['details'][:80]}...")
    assert error["type"] == "value_not_in_list"
    assert error["details"].startswith("unet_name: 'no_such_model.safetensors' not in [")
    assert_group_still_samples(comfy_server, install, init_node, cached=None)


def dangling_link(server: ComfyServer, checkpoint) -> Path:
    """A listed name whose file is gone: a link whose target was deleted after ComfyUI read the folder.

    (Deleting a plain file changes the folder's mtime, so ComfyUI re-lists it and rejects the name itself.)
    """
    target = server.base_dir / "moved_away.safetensors"
    target.touch()
    link = server.diffusion_models_dir / "gone.safetensors"
    link.symlink_to(target)
    listed = server.object_info()["TandemModelLoader"]["input"]["required"]["unet_name"][0]
    assert link.name in listed
    target.unlink()
    return link


def truncated(server: ComfyServer, checkpoint) -> Path:
    """The first half of a real checkpoint, as an interrupted download leaves it."""
    data = checkpoint("wan21_t2v").read_bytes()
    path = server.diffusion_models_dir / "truncated.safetensors"
    path.write_bytes(data[: len(data) // 2])
    return path


def truncated_gguf(server: ComfyServer, checkpoint) -> Path:
    from tandem.tests.test_gguf import make_gguf

    directory = server.base_dir / "gguf_source"
    directory.mkdir(exist_ok=True)
    data = make_gguf(checkpoint("wan21_t2v"), directory)[0].read_bytes()
    path = server.diffusion_models_dir / "truncated.gguf"
    path.write_bytes(data[: len(data) // 2])
    return path


def linked(family: str):
    def make(server: ComfyServer, checkpoint) -> Path:
        path = server.diffusion_models_dir / f"bad_{family}.safetensors"
        path.symlink_to(checkpoint(family))
        return path
    return make


BAD_MODELS = {   # how to make the file, and what the one-line message must say (the last part names the fix)
    "file-gone": (dangling_link, ["'gone.safetensors' is not in ComfyUI's diffusion_models folders",
                                  "put it there or pick another file"]),
    "pixart": (linked("pixart_sigma"), [
        "Tandem's sequence parallelism does not support PixArtMS models yet "
        "(supported: Wan, Flux, Qwen-Image, HunyuanVideo",   # then the adapters added since
        "set Ulysses degree and Ring degree to 1 for this model"]),
    "3-heads": (linked("wan21_t2v_3heads"), [
        "Ulysses degree 2 does not divide the model's 3 attention heads: use one of 1, 3"]),
    "truncated": (truncated, ["truncated.safetensors", "download"]),
    "truncated-gguf": (truncated_gguf, ["truncated.gguf is not a readable GGUF file", "download"]),
}


@pytest.mark.parametrize("case", BAD_MODELS)
def test_bad_model_fails_in_one_line_and_group_survives(comfy_server, install, checkpoint, init_node, case):
    make, expected = BAD_MODELS[case]
    assert_group_still_samples(comfy_server, install, init_node, cached=None)   # the group is up before the error
    path = make(comfy_server, checkpoint)
    try:
        prompt = tandem_prompt(init_node, path.name, (32, 32, 9), next(_seeds), f"bad_{case}")
        error = comfy_server.wait_error(comfy_server.post_prompt(prompt), timeout=120)
    finally:
        path.unlink()
    message = error["exception_message"].strip()
    print(f"{case}: {error['node_type']}: {message}")
    assert error["node_type"] == "TandemModelLoader"
    assert "\n" not in message, message
    assert_group_still_samples(comfy_server, install, init_node, cached=True)

    missing = [part for part in expected if part.lower() not in message.lower()]
    assert not missing, f"{missing} not in {message!r}"


def assert_group_still_samples(comfy_server, install, init_node, cached: bool | None) -> None:
    """A fresh sampling prompt succeeds; ``cached``: whether Tandem Init must (not) have been served from cache,
    i.e. the group that saw the previous prompt is the one that sampled."""
    prompt = tandem_prompt(init_node, install("wan21_t2v"), (32, 32, 9), next(_seeds), "still_samples")
    entry = comfy_server.wait(comfy_server.post_prompt(prompt))
    assert "tandem" not in cached_nodes(entry)
    assert torch.isfinite(saved_latent(comfy_server, entry, "save_tandem")).all()
    if cached is not None:
        assert ("init" in cached_nodes(entry)) == cached, cached_nodes(entry)


def ray_processes(server: ComfyServer) -> list[str]:
    """Ray's head processes under the server (Tandem's 'local' Ray head is the server's child)."""
    names = []
    for child in psutil.Process(server.process.pid).children(recursive=True):
        try:
            names.append(child.name())
        except psutil.NoSuchProcess:
            pass
    return [name for name in names if name in ("raylet", "gcs_server")]


def test_shutdown_in_a_prompt_that_samples_is_refused_and_tandem_keeps_working(comfy_server, install, init_node):
    """ComfyUI does not order Tandem Shutdown after the nodes that use the group: in the same prompt it could stop the
    workers under them (and Ray would then start a cluster of its own). It refuses in one line; the group lives."""
    prompt = tandem_prompt(init_node, install("wan21_t2v"), (32, 32, 9), next(_seeds), "with_shutdown")
    prompt["stop"] = {"class_type": "TandemShutdown", "inputs": {"group": ["init", 0]}}
    error = comfy_server.wait_error(comfy_server.post_prompt(prompt), timeout=120)
    message = error["exception_message"].strip()
    print(f"{error['node_type']}: {message}")
    assert error["node_type"] == "TandemShutdown" and "\n" not in message
    assert message.startswith("Tandem Shutdown is in the same prompt as TandemModelLoader (node load)")
    assert message.endswith("queue Tandem Shutdown in a prompt of its own")
    assert_group_still_samples(comfy_server, install, init_node, cached=True)


def test_shutdown_stops_group_and_ray(comfy_server, install, init_node):
    """Runs last: Tandem Shutdown stops the server's group and the Ray head Tandem started there."""
    assert_group_still_samples(comfy_server, install, init_node, cached=None)
    assert ray_processes(comfy_server), "Tandem's Ray head should be running in the server"
    entry = comfy_server.wait(comfy_server.post_prompt(
        {"init": init_node, "stop": {"class_type": "TandemShutdown", "inputs": {"group": ["init", 0]}}}))
    assert "stop" not in cached_nodes(entry)
    deadline = time.monotonic() + 30
    while ray_processes(comfy_server) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes(comfy_server), "Ray's processes outlived Tandem Shutdown"
