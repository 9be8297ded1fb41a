"""Random-weight checkpoints with a model's real layout, generated on the device and cached on local disk: bf16
safetensors, or GGUF (Q8_0, Q4_K) as the quantized files ComfyUI users share.

    python bench/weights.py MODEL PATH [--device cuda] [--quant bf16|Q8_0|Q4_K]

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

import numpy as np
import torch

from matrix import MODELS, Model


DEFAULT_CACHE = Path(os.environ.get("TANDEM_BENCH_CACHE", Path.home() / ".cache" / "tandem-bench"))


QUANTS = ("bf16", "Q8_0", "Q4_K")


def file_name(name: str, quant: str = "bf16") -> str:
    """Cache file name; it changes with the layout, so an edited model entry never reuses a stale file."""
    digest = hashlib.sha256(json.dumps(MODELS[name].unet_config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}-{digest}-bf16.safetensors" if quant == "bf16" else f"{name}-{digest}-{quant}.gguf"


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
    others = sorted([*directory.glob("*-bf16.safetensors"), *directory.glob("*.gguf")], key=lambda p: p.stat().st_mtime)
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


def _q8_0(x: torch.Tensor) -> torch.Tensor:
    """Q8_0 blocks of ``x`` (rows × cols, cols a multiple of 32): per 32 values an fp16 scale and 32 int8."""
    blocks = x.float().reshape(-1, 32)
    d = blocks.abs().amax(1, keepdim=True) / 127
    q = torch.where(d > 0, blocks / d, 0).round().to(torch.int8)
    return torch.cat([d.half().view(torch.uint8), q.view(torch.uint8)], 1).reshape(x.shape[0], -1)


def _q4_k(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random Q4_K blocks with ``x``'s shape (144 bytes per 256 values): uniform random 4-bit quants q, every
    sub-block's 6-bit scale and min 32, and super-block scales d, dmin = 7.5 d, so values 32 d (q − 7.5) have mean 0
    and N(0, 0.02)'s spread. The ``gguf`` library has no Q4_K quantizer; the bytes cost the same to dequantize
    whatever they hold."""
    blocks = torch.randint(0, 256, (x.numel() // 256, 144), generator=generator, device=x.device, dtype=torch.uint8)
    d = torch.full((blocks.shape[0], 1), 0.02 / (32 * 4.61), device=x.device)
    blocks[:, 0:2], blocks[:, 2:4] = d.half().view(torch.uint8), (7.5 * d).half().view(torch.uint8)
    blocks[:, 4:12], blocks[:, 12:16] = 32 | 2 << 6, 0      # scale and min 32: low 6 bits 32, high bits (2) on top
    return blocks.reshape(x.shape[0], -1)


# general.architecture as ComfyUI-GGUF's converter writes it (its loader refuses other names)
GGUF_ARCH = {"WAN21_T2V": "wan", "WAN22_T2V": "wan", "Flux": "flux", "QwenImage": "qwen_image",
             "HunyuanVideo": "hyvid"}


def generate_gguf(model: Model, path: Path, device: str, quant: str) -> None:
    """The same seeded tensors as ``generate``, as GGUF: 2-D weights whose rows split into 256-blocks in ``quant``,
    the rest F32 (5-D ones flattened to 2-D with ComfyUI-GGUF's ``orig_shape`` field, as its converter does).
    Streamed: the header first, then one tensor at a time."""
    import gguf

    qtype = gguf.GGMLQuantizationType[quant]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    shapes = layout(model)
    stored = {name: (shape if len(shape) <= 4 else torch.Size([shape[0], math.prod(shape[1:])]))
              for name, shape in shapes.items()}
    quantized = {name for name, shape in stored.items() if len(shape) == 2 and shape[1] % 256 == 0}
    make_room(path.parent, sum(math.prod(s) for s in shapes.values()) * 2)
    partial = path.with_suffix(".partial")
    writer = gguf.GGUFWriter(str(partial), arch=GGUF_ARCH[model.config_class])
    for name, shape in shapes.items():
        if len(shape) > 4:
            writer.add_array(f"comfy.gguf.orig_shape.{name}", list(shape))
        rows, cols = (stored[name][0], stored[name][-1]) if name in quantized else (None, None)
        if name in quantized:
            writer.add_tensor_info(name, (rows, cols // block * size), np.dtype(np.uint8),
                                   rows * cols // block * size, raw_dtype=qtype)
        else:
            writer.add_tensor_info(name, tuple(stored[name]), np.dtype(np.float32), 4 * math.prod(shape))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    generator = torch.Generator(device=device).manual_seed(0)
    for name, shape in shapes.items():
        x = torch.randn(stored[name], generator=generator, device=device).mul_(0.02)
        if len(shape) == 1 and "norm" in name and not name.endswith("bias"):
            x += 1.0
        if name in quantized:
            x = _q8_0(x) if quant == "Q8_0" else _q4_k(x, generator)
        writer.write_tensor_data(x.cpu().numpy())
    writer.close()
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
    p.add_argument("--quant", choices=QUANTS, default="bf16")
    args = p.parse_args()
    from _tandem import import_tandem

    import_tandem()           # makes ComfyUI importable, in CPU mode where there is no GPU
    start = time.perf_counter()
    if args.quant == "bf16":
        generate(MODELS[args.model], args.path, args.device)
    else:
        generate_gguf(MODELS[args.model], args.path, args.device, args.quant)
    print(f"{args.path.name}: {args.path.stat().st_size / 1e9:.1f} GB in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
