"""Tandem loads into a real ComfyUI server (under a clone name other than ``tandem``) and exposes its nodes."""
import re
from pathlib import Path

from tandem.tests.server import CLONE_NAME, ComfyServer

TEST_NODES_NAME = "tandem_test_nodes"   # conftest links tests/comfy_nodes/tandem_test_nodes beside Tandem

EXPECTED_INPUTS = {
    "KSamplerAdvanced": ["model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler", "positive",
                         "negative", "latent_image", "start_at_step", "end_at_step", "return_with_leftover_noise"],
    "TandemInit": ["ray_address", "gpu_count", "ulysses_degree", "ring_degree", "cfg_degree", "fsdp",
                   "fsdp_cpu_offload", "attention", "timeout_s"],
    "TandemShutdown": [],
    "TandemModelLoader": ["unet_name", "weight_dtype", "group"],
    "TandemLoraLoader": ["model", "lora_name", "strength_model"],
    "TandemTestConditioning": ["seed", "tokens", "width"],
    "XFuserKSamplerAdvanced": ["model", "add_noise", "noise_seed", "steps", "cfg", "sampler_name", "scheduler",
                               "positive", "negative", "latent_image", "start_at_step", "end_at_step",
                               "return_with_leftover_noise"],
}


def test_tandem_imports_once_under_its_clone_name(comfy_server: ComfyServer) -> None:
    """ComfyUI's own audio nodes fail without torchaudio (setup.sh installs it only where a release exists for the
    installed torch); only Tandem's lines count."""
    log = comfy_server.log_text()
    loaded = [line for line in log.splitlines() if re.search(r"seconds.*: .*custom_nodes", line)]
    assert any(line.rstrip().endswith(f"custom_nodes/{CLONE_NAME}") for line in loaded), log
    ours = [line for line in log.splitlines() if CLONE_NAME in line or TEST_NODES_NAME in line]
    assert not [line for line in ours if "IMPORT FAILED" in line or "Cannot import" in line], log
    folders = sorted(Path(line.split(": ", 1)[1].strip()).name for line in loaded)
    assert folders == sorted([CLONE_NAME, TEST_NODES_NAME]), f"only our custom_nodes folders may load, got {loaded}"


def test_object_info_lists_nodes(comfy_server: ComfyServer) -> None:
    info = comfy_server.object_info()
    missing = [name for name in EXPECTED_INPUTS if name not in info]
    assert not missing, f"node types missing from /object_info: {missing}"
    for name, inputs in EXPECTED_INPUTS.items():
        declared = {**info[name]["input"].get("required", {}), **info[name]["input"].get("optional", {})}
        assert set(inputs) <= set(declared), f"{name}: missing inputs {set(inputs) - set(declared)}"


def test_prompt_round_trip(comfy_server: ComfyServer) -> None:
    """post_prompt/wait work on a core-only workflow, so a failing Tandem workflow is Tandem's fault."""
    workflow = {"1": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
                "2": {"class_type": "SaveLatent", "inputs": {"samples": ["1", 0], "filename_prefix": "round_trip"}}}
    entry = comfy_server.wait(comfy_server.post_prompt(workflow), timeout=60)
    assert entry["outputs"]["2"]["latents"][0]["filename"].startswith("round_trip")
