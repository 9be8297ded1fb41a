"""The benchmark harness (bench/run.py) on CPU: the whole matrix runs on a tiny Wan, every real model is set up as
ComfyUI would load it, and the GPU-only parsing works. Speed is never asserted (two shared CPU cores)."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "bench"))      # the harness's modules import each other as scripts

from cell import conditioning, ksampler  # noqa: E402
from matrix import MODELS, parse_size  # noqa: E402
from report import links  # noqa: E402
from weights import layout  # noqa: E402

REAL = {"wan2.1-1.3b": 1.3, "wan2.1-14b": 14, "wan2.2-5b": 5, "flux-12b": 12, "qwen-image-20b": 20,
        "hunyuanvideo-13b": 13, "sd3.5-large-8b": 8.1, "sd3.5-medium-2.5b": 2.5, "ltxv-2b": 2, "cosmos-predict2-2b": 2,
        "hidream-i1-17b": 17, "omnigen2-4b": 4, "z-image-6b": 6, "hunyuan-image-2.1-17b": 17,
        "wan2.2-animate-14b": 17.3}   # published parameter counts, billions (Animate: 14B + face adapter, 34.5 GB)
BLOCK_COUNTS = ("num_layers", "depth", "depth_single_blocks", "num_single_layers", "n_layers", "num_blocks")


def shallow(name: str) -> dict:
    """unet_config changes for the one-block sampling test: every block count 1, at the real width."""
    model = MODELS[name]
    if model.config_class == "SD3":      # MMDiT's depth is its width (64 · depth); num_blocks counts its blocks
        return {"num_blocks": 1}
    config = model.unet_config
    if model.config_class == "HiDream":  # one Llama layer per block: the first double block's and first single's
        return {"num_layers": 1, "num_single_layers": 1,
                "llama_layers": [config["llama_layers"][0], config["llama_layers"][config["num_layers"]]]}
    return {k: 1 for k in BLOCK_COUNTS if k in config}


def table(markdown: str) -> list[list[str]]:
    """The Markdown table's rows as cells (header first, separator dropped); escaped pipes stay in their cell."""
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row] for row in rows if not set(row[0]) <= set("- ")]


def test_cpu_matrix_writes_table_json_and_plot(tmp_path):
    benchmarks = tmp_path / "BENCHMARKS.md"
    benchmarks.write_text("# Tandem benchmarks\n")
    out = tmp_path / "out"
    command = [sys.executable, str(ROOT / "bench" / "run.py"), "--device", "cpu", "--models", "tiny-wan",
               "--size", "16x16x5", "--gpus", "2", "--modes", "comfyui,tandem1,usp,cfg-parallel", "--repeats", "3",
               "--cache", str(tmp_path / "cache"), "--out", str(out), "--append", str(benchmarks)]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    data = json.loads((out / "results.json").read_text())
    assert data["machine"]["device"] == "cpu" and "--models tiny-wan" in data["machine"]["command"]
    cells = {(c["mode"], c["gpus"]): c for c in data["cells"]}
    assert list(cells) == [("comfyui", 1), ("tandem1", 1), ("usp", 2), ("cfg-parallel", 2)]
    assert cells[("usp", 2)]["group"] == {"gpu_count": 2, "ulysses_degree": 2}
    for key in [("comfyui", 1), ("tandem1", 1), ("usp", 2)]:
        cell = cells[key]
        assert cell["status"] == "ok", cell.get("message")
        assert len(cell["step_s"]) == data["steps"] == 6
        assert len(cell["repeat_prompt_runs_s"]) == data["repeats"] == 3
        assert cell["repeat_prompt_s"] == sorted(cell["repeat_prompt_runs_s"])[1]      # the median
        assert cell["prompt_overhead_s"] == pytest.approx(cell["repeat_prompt_s"] - cell["s_per_step"])
        assert cell["repeat_prompt_vs_comfyui_s"] == pytest.approx(
            cell["repeat_prompt_s"] - cells[("comfyui", 1)]["repeat_prompt_s"])
        assert cell["efficiency"] == pytest.approx(cell["speedup"] / key[1])
        ram = cell["host_ram_after_load"]
        assert len(ram["private_gb"]) == key[1] and min(ram["private_gb"]) > 0 and ram["page_cache_gb"] > 0
        assert cell["peak_vram_gb"] == [None] * key[1]          # CPU: no VRAM to report
        assert (out / "logs" / f"tiny-wan-{key[0]}-{key[1]}.log").is_file()
    for key in [("tandem1", 1), ("usp", 2)]:                    # same inputs as ComfyUI alone, same result
        assert cells[key]["rel_err_vs_comfyui"] < 1e-4
    refused = cells[("cfg-parallel", 2)]
    assert refused["status"] in ("ok", "unsupported")           # unsupported until CFG-parallel lands

    markdown = (out / "results.md").read_text()
    rows = table(markdown)
    assert rows[0][:5] == ["model", "workload", "mode", "GPUs", "s/step"]
    assert rows[0][-3:] == ["repeat prompt s", "prompt overhead s", "rel. err vs ComfyUI"]
    tandem1 = cells[("tandem1", 1)]
    assert (f"Per-prompt overhead of the drop-in path (repeat 1-step prompt, median of 3; Tandem on 1 GPU vs ComfyUI "
            f"alone): tiny-wan 16x16x5: {tandem1['repeat_prompt_s']:.3f} s vs "
            f"{cells[('comfyui', 1)]['repeat_prompt_s']:.3f} s, {tandem1['repeat_prompt_vs_comfyui_s']:+.3f} s.\n"
            in markdown)
    assert len(rows) == 5 and all(len(row) == len(rows[0]) for row in rows)
    assert [row[2] for row in rows[1:]] == ["ComfyUI, 1 GPU", "Tandem, 1 GPU", "Tandem, Ulysses 2",
                                           "Tandem, CFG-parallel on 2"]
    if refused["status"] == "unsupported":
        assert rows[4][4] == f"unsupported: {refused['message']}"
    assert benchmarks.read_text() == "# Tandem benchmarks\n\n" + markdown
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", REAL)
def test_model_layout_is_what_comfyui_detects(name):
    shapes = layout(MODELS[name])           # raises unless detection builds exactly these keys and shapes back
    billions = sum(torch.Size(s).numel() for s in shapes.values()) / 1e9
    assert billions == pytest.approx(REAL[name], rel=0.1)


@pytest.mark.parametrize("name", [name for name in REAL if name != "wan2.2-animate-14b"])
def test_model_inputs_sample_one_step(name):
    """The harness's conditioning and latent for each model run through ComfyUI's KSamplerAdvanced (one block
    deep). Not Wan 2.2 Animate: its face encoder on a 512 × 512 face video costs ~30 s and ~1 GB per frame on the
    CPU (test_families_wan_variants samples those inputs on a tiny Animate)."""
    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models
    model = MODELS[name]
    config = getattr(comfy.supported_models, model.config_class)({**model.unet_config, **shallow(name)})
    config.set_inference_dtype(torch.float32, None)
    patcher = comfy.model_patcher.ModelPatcher(config.get_model({}, ""), load_device=torch.device("cpu"),
                                               offload_device=comfy.model_management.unet_offload_device())
    size = "64x64x5" if parse_size(model.size)[2] > 1 else "64x64"
    inputs = conditioning(model, size)
    samples = ksampler(patcher, inputs, model.cfg, 1)
    assert samples.numel() == inputs["latent"]["samples"].numel()


def test_links_reads_nvidia_smi_topology():
    nvlink = ("\x1b[4m\tGPU0\tGPU1\tCPU Affinity\tNUMA Affinity\tGPU NUMA ID\x1b[0m\n"
              "GPU0\t X \tNV18\t0-47\t0\t\tN/A\n"
              "GPU1\tNV18\t X \t0-47\t0\t\tN/A\n\nLegend:\n\n  X    = Self\n"
              "  NV#  = Connection traversing a bonded set of # NVLinks")
    pcie = ("\tGPU0\tGPU1\tGPU2\nGPU0\t X \tPIX\tSYS\nGPU1\tPIX\t X \tSYS\nGPU2\tSYS\tSYS\t X \n"
            "NIC0\tPIX\tPIX\tSYS\n")
    assert links(nvlink, 2) == "NV18"
    assert links(pcie, 2) == "PIX" and links(pcie, 3) == "PIX, SYS"
    assert links(nvlink, 1) == links("", 2) == "none"
