"""Wan s/step: ComfyUI alone on 1 GPU vs Tandem (Ulysses over every GPU), random weights, real layout.

    python bench/wan.py --model wan2.1-14b [--size 832x480x81 --cfg 5 --sampler euler --out DIR]

A 1-step warm-up runs first (ComfyUI moves the weights to the GPU on the first sample), then
s/step = (t(6 steps) − t(2 steps)) / 4 for each, which cancels the remaining fixed costs; the median of the
per-step times inside the 6-step run is printed beside it. Both runs share seed and conditioning (distinct
positive and negative), so the bf16 latents are compared too. Results: one Markdown row per run and a JSON file.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from _tandem import import_tandem

LAYOUTS = {   # Wan 2.1 configs as ComfyUI detects them (heads = dim / 128)
    "wan2.1-1.3b": dict(dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-14b": dict(dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
}


def make_weights(model: str, path: Path) -> float:
    """Random bf16 weights with ComfyUI's WanModel key layout, generated on the GPU; returns seconds."""
    from comfy.ldm.wan.model import WanModel
    import comfy.ops
    from safetensors.torch import save_file

    start = time.perf_counter()
    with torch.device("meta"):
        shapes = WanModel(model_type="t2v", text_dim=4096, freq_dim=256, in_dim=16, out_dim=16,
                          operations=comfy.ops.disable_weight_init, **LAYOUTS[model]).state_dict()
    g = torch.Generator(device="cuda").manual_seed(0)
    tensors = {}
    for name, t in shapes.items():
        x = torch.randn(t.shape, device="cuda", generator=g, dtype=torch.float32) * 0.02
        if "norm" in name and t.ndim == 1:
            x += 1
        tensors[name] = x.to(torch.bfloat16).cpu()
    save_file(tensors, str(path))
    return time.perf_counter() - start


def inputs(size: str, cfg: float, sampler: str, steps: int):
    from tandem.workers.sampling import SampleRequest

    w, h, f = map(int, size.split("x"))
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 512, 4096, generator=g), {}]]
    negative = [[torch.randn(1, 512, 4096, generator=g), {}]]
    latent = {"samples": torch.zeros(1, 16, (f - 1) // 4 + 1, h // 8, w // 8)}
    return SampleRequest(add_noise=True, noise_seed=42, steps=steps, cfg=cfg, sampler_name=sampler,
                         scheduler="simple", positive=positive, negative=negative, latent=latent,
                         start_at_step=0, end_at_step=10000, return_with_leftover_noise=False)


def baseline(args) -> dict:
    """ComfyUI alone: its loader and sampler in this process on GPU 0."""
    import comfy.sd
    from tandem.workers.sampling import run_ksampler

    result = {"mode": "ComfyUI, 1 GPU"}
    if not Path(args.weights).exists():   # generated here so the parent process never touches a GPU
        result["weights_s"] = make_weights(args.model, Path(args.weights))
    start = time.perf_counter()
    model = comfy.sd.load_diffusion_model(args.weights)
    result["load_s"] = time.perf_counter() - start
    run_ksampler(model, inputs(args.size, args.cfg, args.sampler, 1), lambda *a: None)   # warm-up: GPU load
    for steps in (2, 6):
        ends = [time.perf_counter()]
        torch.cuda.reset_peak_memory_stats()
        samples = run_ksampler(model, inputs(args.size, args.cfg, args.sampler, steps),
                               lambda *a: (torch.cuda.synchronize(), ends.append(time.perf_counter())))
        result[f"t{steps}"] = ends[-1] - ends[0]
        result["step_s"] = [b - a for a, b in zip(ends, ends[1:])]
    result["peak_vram_gb"] = torch.cuda.max_memory_allocated() / 2**30
    torch.save(samples, args.latent)
    return result


def tandem(args) -> dict:
    from tandem.parallel.degrees import GroupConfig
    from tandem.workers import group as groups

    n = torch.cuda.device_count()
    start = time.perf_counter()
    group = groups.start(GroupConfig(gpu_count=n, ulysses_degree=n, attention=args.attention))
    start_s = time.perf_counter() - start
    start = time.perf_counter()
    key = group.call("load", args.weights, "default")[0]["key"]
    result = {"mode": f"Tandem, Ulysses {n}", "start_s": start_s, "load_s": time.perf_counter() - start}
    group.call("sample", key, inputs(args.size, args.cfg, args.sampler, 1))              # warm-up: GPU load
    for steps in (2, 6):
        start = time.perf_counter()
        (samples, stats), *rest = group.call("sample", key, inputs(args.size, args.cfg, args.sampler, steps))
        result[f"t{steps}"] = time.perf_counter() - start
        result["step_s"] = stats["step_s"]
        result["peak_vram_gb"] = max(s["peak_vram_gb"] for s in [stats] + [r[1] for r in rest])
        result["block_tokens"] = stats["block_tokens"]
    reference = torch.load(args.latent)
    result["rel_err_vs_1gpu"] = ((samples.float() - reference.float()).norm() / reference.float().norm()).item()
    groups.shutdown()
    return result


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=LAYOUTS, default="wan2.1-1.3b")
    p.add_argument("--size", default="832x480x81")
    p.add_argument("--cfg", type=float, default=5.0)
    p.add_argument("--sampler", default="euler")
    p.add_argument("--attention", default="sdpa")
    p.add_argument("--cache", default=os.environ.get("TANDEM_BENCH_CACHE", "/dev/shm/tandem-bench"))
    p.add_argument("--out", default=os.environ.get("OUT", "bench/out"))
    p.add_argument("--role", choices=["all", "baseline"], default="all")
    p.add_argument("--weights")
    p.add_argument("--latent")
    args = p.parse_args()
    import_tandem()
    if args.role == "baseline":
        print("RESULT " + json.dumps(baseline(args)))
        return
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    args.weights = str(Path(args.cache) / f"{args.model}-bf16.safetensors")
    args.latent = str(Path(args.cache) / f"{args.model}-{args.size}-baseline.pt")
    cmd = [sys.executable, __file__, "--role", "baseline", "--model", args.model, "--weights", args.weights,
           "--latent", args.latent,
           "--size", args.size, "--cfg", str(args.cfg), "--sampler", args.sampler]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).parent)
    lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
    if not lines:
        sys.exit(f"baseline failed:\n{out.stderr[-4000:]}")
    runs = [json.loads(lines[0][7:]), tandem(args)]
    base = (runs[0]["t6"] - runs[0]["t2"]) / 4
    print(f"\n{args.model} {args.size}, CFG {args.cfg}, {args.sampler}, bf16, {torch.cuda.device_count()}× "
          f"{torch.cuda.get_device_name(0)}, weights generated in {runs[0].get('weights_s', 0):.0f} s")
    print("| mode | s/step (t6−t2)/4 | median step s | speedup | load s | peak VRAM GB/GPU | rel. err vs 1 GPU |")
    print("|---|---|---|---|---|---|---|")
    for r in runs:
        r["s_per_step"] = (r["t6"] - r["t2"]) / 4
        r["median_step_s"] = statistics.median(r["step_s"][1:])
        print(f"| {r['mode']} | {r['s_per_step']:.2f} | {r['median_step_s']:.2f} | {base / r['s_per_step']:.2f}× | "
              f"{r['load_s']:.1f} | {r['peak_vram_gb']:.1f} | {r.get('rel_err_vs_1gpu', 0):.1e} |")
    (Path(args.out) / f"wan-{args.model}.json").write_text(json.dumps(runs, indent=1))


if __name__ == "__main__":
    main()
