"""Tandem against ComfyUI alone on one GPU, on every GPU count the machine has: model × mode × GPU count.

    python bench/run.py [--models wan2.1-14b,flux-12b] [--modes comfyui,tandem1,usp] [--gpus 1,2,4,8] [--size WxHxF]
    python bench/run.py --device cpu --models tiny-wan --gpus 2          # the same code on CPU workers (gloo)

Every cell runs in its own process (a crash or a hang costs one cell, and ComfyUI alone never shares a process
with Ray); a cell that Tandem refuses is recorded as "unsupported: <its message>". Random-weight checkpoints with
the real layout are generated on the device and cached (--cache). After every cell the results so far are written
to --out (results.json, results.md, results.png, and each cell's log under logs/), so a run cut short still
leaves them; at the end the Markdown section is appended to --append (BENCHMARKS.md).
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from tqdm import tqdm

import report
from matrix import DEFAULT_MODES, MODELS, MODES
from weights import DEFAULT_CACHE, QUANTS, file_name

HERE = Path(__file__).resolve().parent


def arguments() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default=",".join(m for m in MODELS if not m.startswith("tiny")),
                   help=f"comma-separated, default all but tiny-wan: {', '.join(MODELS)}")
    p.add_argument("--modes", default=",".join(DEFAULT_MODES), help=f"comma-separated: {', '.join(MODES)}")
    p.add_argument("--gpus", default="1,2,4,8", help="GPU counts for multi-GPU modes; counts above what exists are "
                                                     "dropped")
    p.add_argument("--quant", choices=QUANTS, default="bf16", help="weights: bf16 safetensors, or GGUF (ComfyUI "
                   "alone then loads them with ComfyUI-GGUF from $COMFYUI_GGUF_PATH, as its Unet Loader (GGUF) does)")
    p.add_argument("--weight-dtype", default="default", help="the loaders' weight dtype (e.g. fp8_e4m3fn_fast)")
    p.add_argument("--size", help="WxH or WxHxF for every model (default: each model's own)")
    p.add_argument("--steps", type=int, default=6, help="steps of the timed run (at least 3)")
    p.add_argument("--repeats", type=int, default=5, help="repeat 1-step prompts per cell, whose median wall time "
                                                          "gives the per-prompt overhead (at least 1)")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or HERE / "out"))
    p.add_argument("--append", default=str(HERE.parent / "BENCHMARKS.md"), help="file the Markdown section is "
                                                                                 "appended to ('' for none)")
    p.add_argument("--cell-timeout", type=int, default=900, help="seconds before a cell is killed")
    args = p.parse_args()
    args.models, args.modes = args.models.split(","), args.modes.split(",")
    for name, table in (("model", MODELS), ("mode", MODES)):
        unknown = set(getattr(args, name + "s")) - set(table)
        if unknown:
            p.error(f"unknown {name} {', '.join(sorted(unknown))}: choose from {', '.join(table)}")
    if args.steps < 3:
        p.error("--steps must be at least 3: (t(steps) − t(2)) / (steps − 2) needs more steps than the short run")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    available = torch.cuda.device_count() if args.device == "cuda" else os.cpu_count()
    args.gpus = [n for n in map(int, args.gpus.split(",")) if n <= available]
    return args


def find_comfyui() -> None:
    """COMFYUI_PATH for the cells: as set, else the ComfyUI this checkout sits in (custom_nodes/), else the one
    scripts/setup.sh unpacked into .comfyui/."""
    for candidate in (os.environ.get("COMFYUI_PATH"), HERE.parents[2], HERE.parent / ".comfyui"):
        if candidate and (Path(candidate) / "comfy" / "model_management.py").is_file():
            os.environ["COMFYUI_PATH"] = str(Path(candidate).resolve())
            return
    sys.exit("bench: cannot find ComfyUI: set COMFYUI_PATH to the folder that holds ComfyUI's main.py")


def child(script: str, argv: list[str], log: Path, device: str, timeout: int) -> str | None:
    """Run a bench script in its own process (its whole process group is killed on timeout); None if it passed."""
    env = {**os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if device == "cpu" else {})}
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(HERE / script), *argv], stdout=f, stderr=subprocess.STDOUT,
                                env=env, cwd=HERE, start_new_session=True)
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return f"killed after {timeout} s (--cell-timeout); log: {log}"
    return None if code == 0 else f"exit code {code}; log: {log}"


def run_cell(args, model: str, mode: str, gpus: int, weights: Path, weights_error: str | None, logs: Path) -> dict:
    size = args.size or MODELS[model].size
    cell = {"model": model, "mode": mode, "gpus": gpus, "size": size, "quant": args.quant,
            "weight_dtype": args.weight_dtype, "label": MODES[mode].label.format(n=gpus, half=gpus // 2)
            + (" + ComfyUI-GGUF" if mode == "comfyui" and args.quant != "bf16" else ""),
            "group": MODES[mode].group(gpus) if MODES[mode].group else None}
    if weights_error:
        return {**cell, "status": "failed", "message": f"generating the weights: {weights_error}"}
    reference = args.cache / f"{weights.stem}-{args.weight_dtype}-{size}-{args.steps}steps-comfyui.pt"
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "result.json"
        error = child("cell.py", ["--model", model, "--mode", mode, "--gpus", str(gpus), "--size", size,
                                  "--steps", str(args.steps), "--repeats", str(args.repeats),
                                  "--weight-dtype", args.weight_dtype, "--weights", str(weights),
                                  "--reference", str(reference), "--result", str(result)],
                      logs / f"{model}-{mode}-{gpus}.log", args.device, args.cell_timeout)
        return {**cell, **(json.loads(result.read_text()) if result.exists() else
                           {"status": "failed", "message": error or "no result"})}


def add_speedups(cells: list[dict]) -> None:
    """Speedup (ComfyUI's s/step at the same model and size over the cell's), efficiency (speedup per GPU), and the
    repeat 1-step prompt's wall time over ComfyUI's (on Tandem, 1 GPU: the drop-in path's per-prompt overhead)."""
    base = {(c["model"], c["size"]): c for c in cells if c["mode"] == "comfyui" and c["status"] == "ok"}
    for c in cells:
        if c["status"] == "ok" and (c["model"], c["size"]) in base:
            comfyui = base[c["model"], c["size"]]
            c["speedup"] = comfyui["s_per_step"] / c["s_per_step"]
            c["efficiency"] = c["speedup"] / c["gpus"]
            c["repeat_prompt_vs_comfyui_s"] = c["repeat_prompt_s"] - comfyui["repeat_prompt_s"]


def main():
    args = arguments()
    find_comfyui()
    plan = [(model, mode, n) for model in args.models for mode in args.modes
            for n in MODES[mode].gpu_counts(args.gpus)]
    if not plan:
        sys.exit(f"nothing to run: modes {args.modes} on GPU counts {args.gpus} ({args.device})")
    args.cache.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    data = {"machine": report.machine(args.device, max(args.gpus, default=1), shlex.join(["python", *sys.argv])),
            "steps": args.steps, "repeats": args.repeats, "cells": []}
    print(f"{len(plan)} cells on {args.device}, GPU counts {args.gpus}; results in {args.out}", flush=True)
    with tqdm(total=len(args.models) + len(plan), unit="cell", dynamic_ncols=True) as bar:
        for model in args.models:
            weights = args.cache / file_name(model, args.quant)
            bar.set_description(f"{model}: weights")
            error = None if weights.exists() else child(
                "weights.py", [model, str(weights), "--device", args.device, "--quant", args.quant], logs / f"{model}-weights.log",
                args.device, args.cell_timeout)
            bar.update()
            for mode, n in [(mode, n) for m, mode, n in plan if m == model]:
                bar.set_description(f"{model}: {mode} on {n}")
                data["cells"].append(run_cell(args, model, mode, n, weights, error, logs))
                add_speedups(data["cells"])
                text = report.write(data, args.out)
                tqdm.write(text.splitlines()[-1])
                bar.update()
    if args.append:
        with open(args.append, "a") as f:
            f.write("\n" + text)
    print(f"\n{text}\nresults: {args.out}/results.json, results.md, results.png")


if __name__ == "__main__":
    main()
