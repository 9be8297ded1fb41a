"""Random-weight bf16 checkpoints with a model's real layout, generated on the device and cached on local disk.

    python bench/weights.py MODEL PATH [--device cuda]

Run in its own process so the harness's parent never holds a GPU context.
"""
import argparse
import hashlib
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import torch

from matrix import MODELS, Model


DEFAULT_CACHE = Path(os.environ.get("TANDEM_BENCH_CACHE", Path.home() / ".cache" / "tandem-bench"))


def file_name(name: str) -> str:
    """Cache file name; it changes with the layout, so an edited model entry never reuses a stale file."""
    digest = hashlib.sha256(json.dumps(MODELS[name].unet_config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}-{digest}-bf16.safetensors"


def layout(model: Model) -> dict[str, torch.Size]:
    """Key -> shape of the checkpoint, checked to be exactly what ComfyUI's detection builds from those keys."""
    import comfy.model_detection
    import comfy.supported_models

    def shapes(model_config) -> dict[str, torch.Size]:
        with torch.device("meta"):
            return {k: v.shape for k, v in model_config.get_model({}, "").diffusion_model.state_dict().items()}

    wanted = shapes(getattr(comfy.supported_models, model.config_class)(model.unet_config))
    detected = comfy.model_detection.model_config_from_unet(
        {k: torch.empty(s, device="meta") for k, s in wanted.items()}, "")
    if type(detected).__name__ != model.config_class or shapes(detected) != wanted:
        raise ValueError(f"ComfyUI detects this {model.config_class} layout as {type(detected).__name__} "
                         "with other shapes: fix its unet_config in bench/matrix.py")
    return wanted


def make_room(directory: Path, needed: int) -> None:
    """Delete other cached checkpoints, oldest first, until ``needed`` bytes fit (GPU machines have small disks)."""
    others = sorted(directory.glob("*-bf16.safetensors"), key=lambda p: p.stat().st_mtime)
    while others and shutil.disk_usage(directory).free < needed + 2**30:
        others.pop(0).unlink()


def generate(model: Model, path: Path, device: str) -> None:
    """Seeded N(0, 0.02) tensors (norm scales 1 + noise), streamed one at a time into a safetensors file.

    Private host RAM stays at one tensor even for a 20B model; the file appears under its name only when
    complete. Older cached checkpoints make room for it if the disk is short.
    """
    shapes = layout(model)
    header, offset = {}, 0
    for name, shape in shapes.items():
        size = 2 * math.prod(shape)
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    make_room(path.parent, offset)
    generator = torch.Generator(device=device).manual_seed(0)
    partial = path.with_suffix(".partial")
    with open(partial, "wb") as f:
        f.write(struct.pack("<Q", len(head)) + head)
        for name, shape in shapes.items():
            x = torch.randn(shape, generator=generator, device=device).mul_(0.02)
            if len(shape) == 1 and "norm" in name and not name.endswith("bias"):
                x += 1.0
            f.write(x.to(torch.bfloat16).cpu().reshape(-1).view(torch.uint8).numpy())
    os.replace(partial, path)


def cached(name: str, cache: Path) -> Path:
    """The cached checkpoint of model ``name``, generated first (in its own process, see above) when missing."""
    path = cache / file_name(name)
    if not path.exists():
        cache.mkdir(parents=True, exist_ok=True)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        subprocess.run([sys.executable, str(Path(__file__).resolve()), name, str(path), "--device", device],
                       check=True, cwd=Path(__file__).resolve().parent)
    return path


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", choices=MODELS)
    p.add_argument("path", type=Path)
    p.add_argument("--device", default="cuda")
    args = p.parse_args()
    from _tandem import import_tandem

    import_tandem()           # makes ComfyUI importable, in CPU mode where there is no GPU
    start = time.perf_counter()
    generate(MODELS[args.model], args.path, args.device)
    print(f"{args.path.name}: {args.path.stat().st_size / 1e9:.1f} GB in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
