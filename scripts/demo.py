"""The CPU demo's model files: random weights in the layouts of real models, built from ComfyUI's own classes
(``tests/checkpoints.py``), nothing downloaded. The template "Tandem demo (CPU)" loads them; its output is noise.

    python scripts/demo.py MODELS_DIR      # bash scripts/run.sh --demo runs it on ComfyUI's models folder

- diffusion model: a Wan 2.1 T2V of width 256 (2 heads, 2 blocks, ~9 MB), detected by ComfyUI from the file;
- text encoder: a CLIP-L (123M parameters, 246 MB in fp16), loaded by Load CLIP with type ``sd3``, which pads its
  768-wide output to the 4096 a Wan model reads. ComfyUI builds Wan's own encoder (UMT5-XXL, type ``wan``) from a
  fixed config, 5.7B parameters whatever the file holds, and detects Wan without reading its text width, so this is
  the smallest text encoder that ComfyUI loads and a detected Wan accepts;
- VAE: a Wan 2.1 VAE of width 4 (real: 96; ~1 MB), detected by VAE Loader.

Files already there are kept, so a second run costs nothing.
"""
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

FILES = {   # ComfyUI's model folder -> the file the demo template loads from it
    "diffusion_models": "tandem_demo_wan21_t2v.safetensors",
    "text_encoders": "tandem_demo_clip_l.safetensors",
    "vae": "tandem_demo_wan21_vae.safetensors",
}


def _build(folder: str, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    from tandem.tests import checkpoints

    if folder == "diffusion_models":
        os.replace(checkpoints.make_checkpoint("wan21_t2v", path.parent), path)
    elif folder == "text_encoders":
        save_file({k: v.to(torch.float16).contiguous() for k, v in checkpoints.clip_l_state_dict().items()}, path)
    else:
        save_file(checkpoints.wan21_vae_state_dict(dim=4), path)


def install(models_dir: Path) -> dict[str, Path]:
    """Write the demo's files under ``models_dir`` (``<folder>/<file>``) unless they are there; return their paths."""
    paths = {}
    for folder, name in FILES.items():
        paths[folder] = Path(models_dir) / folder / name
        if paths[folder].exists():
            continue
        paths[folder].parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=paths[folder].parent) as tmp:   # written whole, then renamed
            _build(folder, Path(tmp) / name)
            os.replace(Path(tmp) / name, paths[folder])
        print(f"[tandem] demo: wrote {paths[folder]} ({paths[folder].stat().st_size / 1e6:.0f} MB)")
    return paths


if __name__ == "__main__":
    root = Path(__file__).resolve().parent.parent
    if "tandem" not in sys.modules:   # the package without its ComfyUI entry point, as tests/conftest.py does
        spec = importlib.util.spec_from_file_location("tandem", root / "__init__.py",
                                                      submodule_search_locations=[str(root)])
        sys.modules["tandem"] = importlib.util.module_from_spec(spec)
    install(Path(sys.argv[1]))
