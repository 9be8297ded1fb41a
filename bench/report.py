"""The harness's outputs: the machine it ran on, a Markdown section, a JSON file and a speedup plot."""
import datetime
import importlib.metadata
import json
import os
import platform
import re
import subprocess
from pathlib import Path

import torch

from matrix import MODELS


def _run(*cmd: str) -> str:
    """A command's output, or "" where it does not exist (nvidia-smi on a CPU machine)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def links(topo: str, n: int) -> str:
    """The link types between the first ``n`` GPUs in ``nvidia-smi topo -m`` (NV18, PIX, SYS, ...)."""
    lines = re.sub(r"\x1b\[[0-9;]*m", "", topo).splitlines()
    rows = [line.split() for line in lines if re.match(r"GPU\d+\s", line) and "Affinity" not in line]   # not the header
    cells = {row[1 + j] for i, row in enumerate(rows[:n]) for j in range(min(n, len(row) - 1)) if i != j}
    return ", ".join(sorted(cells)) or "none"


def machine(device: str, gpus_used: int, command: str) -> dict:
    """What a reader needs to repeat the run: hardware, link, driver, versions and the exact command."""
    try:
        nccl = ".".join(map(str, torch.cuda.nccl.version())) if device == "cuda" else "none (gloo)"
    except Exception:
        nccl = "unknown"
    info = {"device": device, "torch": torch.__version__, "nccl": nccl, "ray": _version("ray"),
            "xfuser": _version("xfuser"), "python": platform.python_version(), "command": command,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    comfyui = Path(os.environ.get("COMFYUI_PATH", "")) / "comfyui_version.py"
    info["comfyui"] = re.findall(r"\"(.+)\"", comfyui.read_text())[0] if comfyui.is_file() else "unknown"
    if device == "cuda":
        gpus = _run("nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader").splitlines()
        name, memory, driver = (s.strip() for s in gpus[0].split(",")) if gpus else ("unknown GPU", "?", "unknown")
        topo = _run("nvidia-smi", "topo", "-m")
        info.update(gpu=f"{name} ({memory})", gpu_count=len(gpus), driver=driver, link=links(topo, gpus_used),
                    topology=topo)
    else:
        cpu = _run("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2") or platform.processor()
        info.update(gpu=f"CPU workers on gloo ({cpu.strip()})", gpu_count=os.cpu_count(), driver="none",
                    link="none")
    return info


def _fmt(value, spec: str = ".2f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(data: dict) -> str:
    """One section for BENCHMARKS.md: heading, command, machine, method, and one row per cell."""
    m = data["machine"]
    models = sorted({c["model"] for c in data["cells"]}, key=list(MODELS).index)
    repeats = data.get("repeats", 1)
    comfyui = {(c["model"], c["size"]): c for c in data["cells"] if c["mode"] == "comfyui" and c["status"] == "ok"}
    pairs = [f"{c['model']} {c['size']}: {c['repeat_prompt_s']:.3f} s vs {comfyui[key]['repeat_prompt_s']:.3f} s, "
             f"{c['repeat_prompt_vs_comfyui_s']:+.3f} s" for c in data["cells"]
             if c["mode"] == "tandem1" and c["status"] == "ok" and (key := (c["model"], c["size"])) in comfyui]
    overhead = [f"Per-prompt overhead of the drop-in path (repeat 1-step prompt, median of {repeats}; Tandem on 1 GPU "
                f"vs ComfyUI alone): {'; '.join(pairs)}.", ""] if pairs else []
    lines = [
        f"## {', '.join(models)} — {m['date']}", "",
        "```", m["command"], "```", "",
        f"{m['gpu_count']}× {m['gpu']}, link {m['link']}, driver {m['driver']}; torch {m['torch']}, NCCL {m['nccl']}, "
        f"Ray {m['ray']}, ComfyUI {m['comfyui']}, xfuser {m['xfuser']}, Python {m['python']}.", "",
        "bf16 random weights with the real layout; euler, simple; every cell samples with what ComfyUI's "
        "KSamplerAdvanced runs (comfy.sample.sample), on Load Diffusion Model's MODEL (ComfyUI) or Tandem Model Loader's (Tandem). Each cell: start, load, a "
        f"1-step first prompt (ComfyUI moves the weights to the GPU here), the same again {repeats} times (repeat "
        f"prompt s: their median wall time), 2 steps, {data['steps']} steps. "
        f"s/step: median step of the {data['steps']}-step run, and (t{data['steps']} − t2) / {data['steps'] - 2} "
        "from the runs' wall times. Prompt overhead: repeat prompt s − s/step, what a prompt costs beyond its step. "
        "Speedup and efficiency (speedup / GPUs) against ComfyUI on 1 GPU. VRAM: peak allocated, highest GPU. "
        "Host RAM after load: private (anonymous) memory summed over the processes holding the model, and the "
        "host's page cache.", "",
        *overhead,
        f"| model | workload | mode | GPUs | s/step | (t{data['steps']}−t2)/{data['steps'] - 2} | speedup | "
        "efficiency | peak VRAM GB | private RAM GB | page cache GB | load s | first prompt s | repeat prompt s | "
        "prompt overhead s | rel. err vs ComfyUI |",
        "|---" * 16 + "|",
    ]
    for c in data["cells"]:
        model = MODELS[c["model"]]
        quant = "" if c.get("quant", "bf16") == "bf16" else f" {c['quant']} GGUF"
        quant += "" if c.get("weight_dtype", "default") == "default" else f" as {c['weight_dtype']}"
        head = (f"| {c['model']}{quant} | {c['size']}, {model.tokens(c['size'])} tokens, CFG {model.cfg:g} | {c['label']} | "
                f"{c['gpus']} |")
        if c["status"] != "ok":
            message = c["message"].replace("|", "\\|")
            lines.append(f"{head} {c['status']}: {message} |" + " |" * 11)
            continue
        vram = [v for v in c["peak_vram_gb"] if v is not None]
        ram = c["host_ram_after_load"]
        lines.append(
            f"{head} {c['s_per_step']:.3g} | {c['s_per_step_diff']:.3g} | {_fmt(c.get('speedup'))}× | "
            f"{_fmt(c.get('efficiency'), '.0%')} | {_fmt(max(vram) if vram else None, '.1f')} | "
            f"{sum(ram['private_gb']):.1f} | {ram['page_cache_gb']:.1f} | {c['load_s']:.1f} | "
            f"{c['first_prompt_s']:.1f} | {c['repeat_prompt_s']:.2f} | {_fmt(c.get('prompt_overhead_s'), '.3f')} | "
            f"{_fmt(c.get('rel_err_vs_comfyui'), '.1e')} |")
    return "\n".join(lines) + "\n"


def plot(data: dict, path: Path) -> None:
    """Speedup against GPU count: one line per model and mode, and the ideal line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [c for c in data["cells"] if c.get("speedup") is not None and c["mode"] != "comfyui"]
    one_gpu = {c["model"]: (1, c["speedup"]) for c in ok if c["mode"] == "tandem1"}
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for c in ok:             # a multi-GPU mode's line starts at Tandem on 1 GPU
        start = [one_gpu[c["model"]]] if c["gpus"] > 1 and c["model"] in one_gpu else []
        series.setdefault((c["model"], c["mode"]), start).append((c["gpus"], c["speedup"]))
    counts = sorted({c["gpus"] for c in data["cells"]} | {1})
    fig, ax = plt.subplots(figsize=(7, 5))
    ax.plot(counts, counts, "k--", linewidth=1, label="ideal")
    ax.plot([1], [1], "ks", label="ComfyUI, 1 GPU")
    for (model, mode), points in series.items():
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o", label=f"{model} {mode}")
    ax.set(xlabel="GPUs", ylabel="speedup vs ComfyUI on 1 GPU (s/step)", xticks=counts,
           title=f"{data['machine']['gpu']}, link {data['machine']['link']}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write(data: dict, out: Path) -> str:
    """results.json, results.md and results.png in ``out``; returns the Markdown."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1))
    text = markdown(data)
    (out / "results.md").write_text(text)
    plot(data, out / "results.png")
    return text
