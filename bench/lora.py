"""What a LoRA costs a Tandem group: the time to patch the weights when a prompt brings one, to restore them when
the next prompt drops it, and the host RAM it leaves behind (Tandem keeps no backup copy).

    python bench/lora.py [--model wan2.1-14b] [--gpus 2] [--rank 32] [--fsdp] [--cache DIR]

A random LoRA of the given rank over every attention and FFN Linear is generated next to the cached checkpoint.
Five 1-step prompts on one group (Ulysses over ``--gpus``), each KSamplerAdvanced on Tandem Model Loader's MODEL or on
that MODEL with the LoRA applied as ComfyUI's LoRA nodes apply it (``comfy.sd.load_lora_for_models``; the patches
reach the workers with the job): without the LoRA (warm-up), with it (the LoRA node reads the file and patches the
MODEL, the workers patch their weights, step), with it again (ComfyUI's executor reuses the patched MODEL: step),
without it (the workers restore their weights, step), without it again (step). Patch s = t(with) − t(with again)
(lora_node_s of it on the host), restore s = t(without) − t(without again); each prompt's latent is compared with the
warm-up's (0 without the LoRA, not 0 with it). Writes lora.md / lora.json to $OUT (or bench/out).
"""
import argparse
import json
import os
import time
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from _tandem import import_tandem
from cell import conditioning, host_ram, ksampler
from matrix import MODELS
from run import find_comfyui
from weights import DEFAULT_CACHE, cached, layout

HERE = Path(__file__).resolve().parent
PATCHED = ("attn", "ffn", "mlp")     # attention and feed-forward Linears of Wan, Flux, HunyuanVideo, Qwen-Image


def make_lora(model: str, rank: int, path: Path) -> int:
    """A seeded rank-``rank`` LoRA (bf16, ComfyUI's generic key format) over the model's attention/FFN weights;
    returns how many weights it patches."""
    if path.exists():
        with safe_open(str(path), framework="pt") as f:
            return sum(k.endswith(".lora_up.weight") for k in f.keys())
    g = torch.Generator().manual_seed(0)
    tensors = {}
    for key, shape in layout(MODELS[model]).items():
        if len(shape) != 2 or not key.endswith(".weight") or not any(part in key for part in PATCHED):
            continue
        name = "diffusion_model." + key.removesuffix(".weight")
        tensors[f"{name}.lora_up.weight"] = (torch.randn(shape[0], rank, generator=g) * 0.01).bfloat16()
        tensors[f"{name}.lora_down.weight"] = (torch.randn(rank, shape[1], generator=g) * 0.01).bfloat16()
        tensors[f"{name}.alpha"] = torch.tensor(float(rank))
    save_file(tensors, str(path))
    return len(tensors) // 3


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wan2.1-14b", choices=MODELS)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--rank", type=int, default=32)
    p.add_argument("--fsdp", action="store_true", help="shard the weights over the GPUs too (Ulysses + FSDP)")
    p.add_argument("--size", help="WxH or WxHxF (default: the model's own)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or HERE / "out"))
    args = p.parse_args()
    find_comfyui()
    path = cached(args.model, args.cache)
    import_tandem()
    lora_path = args.cache / f"{path.stem}-lora-r{args.rank}.safetensors"
    patched = make_lora(args.model, args.rank, lora_path)
    import comfy.sd
    import comfy.utils

    from tandem.nodes.loader import load
    from tandem.parallel.degrees import GroupConfig
    from tandem.workers import group as groups

    model = MODELS[args.model]
    inputs = conditioning(model, args.size or model.size)
    group = groups.start(GroupConfig(gpu_count=args.gpus, ulysses_degree=args.gpus, fsdp=args.fsdp))
    pids = [w["pid"] for w in group.workers]
    rows, with_lora, node_s, plain_latent = [], None, None, None
    try:
        plain = load(group, str(path), "default")
        for name, lora in (("without (warm-up)", False), ("with", True), ("with again", True), ("without", False),
                           ("without again", False)):
            start = time.perf_counter()
            if lora and with_lora is None:    # the LoRA node runs once; the next prompt reuses its (cached) MODEL
                with_lora = comfy.sd.load_lora_for_models(plain, None, comfy.utils.load_torch_file(str(lora_path)),
                                                          1.0, 0)[0]
                node_s = time.perf_counter() - start
            latent = ksampler(with_lora if lora else plain, inputs, model.cfg, 1).float()
            rows.append({"prompt": name, "s": time.perf_counter() - start, **host_ram(pids),
                         "host_private_gb": host_ram([os.getpid()])["private_gb"][0]})
            plain_latent = latent if plain_latent is None else plain_latent    # the warm-up's: without the LoRA
            rows[-1]["change_vs_without"] = ((latent - plain_latent).norm() / plain_latent.norm()).item()
            print(json.dumps(rows[-1]), flush=True)
    finally:
        groups.shutdown()
    s = {r["prompt"]: r["s"] for r in rows}
    result = {"model": args.model, "gpus": args.gpus, "fsdp": args.fsdp, "rank": args.rank, "patched_weights": patched,
              "lora_mb": lora_path.stat().st_size / 1e6, "patch_s": s["with"] - s["with again"], "lora_node_s": node_s,
              "restore_s": s["without"] - s["without again"], "prompts": rows}
    mode = f"Ulysses {args.gpus}" + (" + FSDP" if args.fsdp else "")
    lines = [f"{args.model}, {mode}: rank-{args.rank} LoRA over {patched} weights ({result['lora_mb']:.0f} MB); "
             f"patch {result['patch_s']:.2f} s (of which the LoRA node on ComfyUI's host {node_s:.2f} s), "
             f"restore {result['restore_s']:.2f} s", "",
             "| 1-step prompt | s | private RAM GB per worker | ComfyUI's private RAM GB | page cache GB | "
             "latent change vs without |", "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['prompt']} | {r['s']:.2f} | {' / '.join(f'{g:.2f}' for g in r['private_gb'])} | "
                     f"{r['host_private_gb']:.2f} | {r['page_cache_gb']:.1f} | {r['change_vs_without']:.1e} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "lora.md").write_text(text)
    (args.out / "lora.json").write_text(json.dumps(result, indent=1))
    print(text)


if __name__ == "__main__":
    main()
