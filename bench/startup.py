"""What Tandem adds to the first prompt after ComfyUI starts, and where it goes (issue: reliability and start-up).

    python bench/startup.py [--settle 10] [--prompts 2]

Each variant runs in a fresh process that imports ComfyUI as its server does (on the GPU where there is one) and
then, like a user, waits ``--settle`` seconds before the first prompt: **comfyui** loads a tiny Wan 2.1 file
(``comfy.sd.load_diffusion_model``, UNETLoader's call) and samples it as KSamplerAdvanced does; **tandem** first does
what ComfyUI's loading of Tandem does (``workers.driver.prestart``: the driver process and its Ray head start in the
background, unless ``TANDEM_PRESTART=0``), then runs Tandem Init (one worker), Tandem Model Loader and the same
sampling on the Tandem MODEL. Printed per variant: the first prompt's seconds and the next ones', and Tandem Init's
log line saying where the group start's seconds went. A tiny model keeps the weights' load out of the difference:
Tandem's workers load a file as fast as ComfyUI (see the load columns of the matrix tables). ComfyUI's server itself
is not started (it needs PyAV, which the GPU machines lack); the prompt's nodes are called as its executor calls them.
"""
import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from _tandem import ROOT, import_tandem

os.environ.setdefault("COMFYUI_PATH", str(ROOT / ".comfyui"))


def inputs() -> dict:
    g = torch.Generator().manual_seed(1)
    return dict(positive=[[torch.randn(1, 12, 4096, generator=g), {}]],
                negative=[[torch.randn(1, 7, 4096, generator=g), {}]],
                latent={"samples": torch.zeros(1, 16, 3, 8, 8)})


def variant(name: str, checkpoint: str, settle: float, prompts: int) -> dict:
    """One fresh ComfyUI process's prompts: seconds of each."""
    import_tandem()
    from cell import ksampler

    import comfy.sd
    from tandem.nodes.group import TandemInit
    from tandem.nodes.loader import load
    from tandem.workers import driver

    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
    if name == "tandem":
        driver.prestart()
    time.sleep(settle)
    seconds = []
    for _ in range(prompts):
        began = time.perf_counter()
        if name == "comfyui":
            model = comfy.sd.load_diffusion_model(checkpoint)
        else:
            (group,) = TandemInit().start(ray_address="local", gpu_count=1, ulysses_degree=1, ring_degree=1,
                                          cfg_degree=1, fsdp=False, fsdp_cpu_offload=False, attention="sdpa",
                                          timeout_s=120)
            model = load(group, checkpoint)    # Tandem Model Loader's call, given the file's path
        ksampler(model, inputs(), 5.0, 2)
        seconds.append(time.perf_counter() - began)
    if name == "tandem":
        driver.shutdown()
    return {"variant": name, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between ComfyUI's start and the prompt")
    parser.add_argument("--prompts", type=int, default=2)
    parser.add_argument("--variant", choices=["comfyui", "tandem"], help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print("RESULT " + json.dumps(variant(args.variant, args.checkpoint, args.settle, args.prompts)), flush=True)
        return
    import_tandem()
    from tandem.tests.checkpoints import make_checkpoint

    checkpoint = make_checkpoint("wan21_t2v", Path(tempfile.mkdtemp(prefix="tandem-startup-")))
    results = {}
    for name in ("comfyui", "tandem"):
        run = subprocess.run([sys.executable, __file__, "--variant", name, "--checkpoint", str(checkpoint),
                              "--settle", str(args.settle), "--prompts", str(args.prompts)],
                             capture_output=True, text=True)
        lines = (run.stdout + run.stderr).splitlines()
        result = [json.loads(line[7:]) for line in lines if line.startswith("RESULT ")]
        if not result:
            sys.exit("\n".join(lines[-30:]))
        results[name] = result[0]["seconds"]
        phases = [line for line in lines if "Tandem Init:" in line]
        print(f"{name}: first prompt {results[name][0]:.2f} s, then "
              f"{', '.join(f'{s:.2f}' for s in results[name][1:])} s{'; ' + phases[0] if phases else ''}")
    print(f"Tandem adds {results['tandem'][0] - results['comfyui'][0]:+.2f} s to the first prompt")


if __name__ == "__main__":
    main()
