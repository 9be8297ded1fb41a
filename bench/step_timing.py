"""Why a per-step callback and (t(6) − t(2)) / 4 can disagree about ComfyUI's s/step: both, measured in one process.

    python bench/step_timing.py [--model wan2.1-1.3b] [--cache DIR]

ComfyUI alone on one GPU (its Load Diffusion Model and KSamplerAdvanced, as the harness's baseline), same inputs
as the harness. In this order, from a fresh load: 2 steps and 6 steps with no warm-up, timing each step by the time
between the sampler's progress-bar updates (no CUDA synchronisation: what ComfyUI's progress bar sees) and each run by
its wall time (which ends when the latent is on the CPU); then the same again warm; then 6 steps with a CUDA
synchronisation at each update. Prints one JSON line per run.
"""
import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from _tandem import import_tandem
from cell import conditioning, ksampler
from matrix import MODELS
from run import find_comfyui
from weights import DEFAULT_CACHE, cached


def timed(model, inputs: dict, cfg: float, steps: int, sync: bool) -> dict:
    marks = []

    def on_step():
        if sync and torch.cuda.is_available():
            torch.cuda.synchronize()
        marks.append(time.perf_counter())

    start = time.perf_counter()
    ksampler(model, inputs, cfg, steps, on_step)
    wall = time.perf_counter() - start
    gaps = [b - a for a, b in zip([start, *marks], marks)]
    return {"steps": steps, "sync": sync, "wall_s": wall, "callback_gaps_s": gaps,
            "callback_mean_s": (marks[-1] - start) / steps, "callback_median_s": statistics.median(gaps)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wan2.1-1.3b", choices=MODELS)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    find_comfyui()
    path = cached(args.model, args.cache)
    import_tandem()
    import comfy.sd

    spec = MODELS[args.model]
    model = comfy.sd.load_diffusion_model(str(path))
    inputs = conditioning(spec, spec.size)
    runs = {}
    for phase in ("cold", "warm"):
        for steps in (2, 6):
            runs[f"{phase}-{steps}"] = timed(model, inputs, spec.cfg, steps, sync=False)
            print(json.dumps({"run": f"{phase}-{steps}", **runs[f"{phase}-{steps}"]}), flush=True)
    runs["warm-6-sync"] = timed(model, inputs, spec.cfg, 6, sync=True)
    print(json.dumps({"run": "warm-6-sync", **runs["warm-6-sync"]}), flush=True)
    for phase in ("cold", "warm"):
        diff = (runs[f"{phase}-6"]["wall_s"] - runs[f"{phase}-2"]["wall_s"]) / 4
        print(f"{phase}: (t6 − t2)/4 = {diff:.3f} s/step; callback mean over the 6-step run "
              f"{runs[f'{phase}-6']['callback_mean_s']:.3f}, median gap {runs[f'{phase}-6']['callback_median_s']:.3f}")
    print(f"synchronised callback median {runs['warm-6-sync']['callback_median_s']:.3f} s/step")


if __name__ == "__main__":
    main()
