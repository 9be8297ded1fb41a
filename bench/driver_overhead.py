"""What a prompt costs for Tandem's Ray driver living in a child process of ComfyUI (``workers/driver.py``): a real
ComfyUI server (CPU, two workers on gloo) samples a tiny Wan prompt repeatedly; ComfyUI's own time for the first prompt
(driver, Ray head, workers, load) and the median of the others are printed, with the driver process's memory (USS:
pages no other process shares). Compare with a checkout
from before the driver moved out of ComfyUI:

    mkdir /tmp/before && git archive c752911 | tar -x -C /tmp/before
    python bench/driver_overhead.py --root /tmp/before
    python bench/driver_overhead.py
"""
import argparse
import importlib.util
import os
import re
import statistics
import sys
import tempfile
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent.parent
os.environ.setdefault("COMFYUI_PATH", str(HERE / ".comfyui"))
if "tandem" not in sys.modules:
    _spec = importlib.util.spec_from_file_location("tandem", HERE / "__init__.py",
                                                   submodule_search_locations=[str(HERE)])
    sys.modules["tandem"] = importlib.util.module_from_spec(_spec)

from tandem.workers.comfyui import import_comfyui  # noqa: E402

import_comfyui()
from tandem.tests.checkpoints import make_checkpoint  # noqa: E402
from tandem.tests.server import TEST_NODES, ComfyServer  # noqa: E402
from tandem.tests.test_workflows import tandem_prompt  # noqa: E402


def init_node(server: ComfyServer) -> dict:
    inputs = {}
    for name, spec in server.object_info()["TandemInit"]["input"]["required"].items():
        options = spec[1] if len(spec) > 1 else {}
        inputs[name] = options.get("default", spec[0][0] if isinstance(spec[0], list) else None)
    return {"class_type": "TandemInit", "inputs": {**inputs, "gpu_count": 2, "ulysses_degree": 2, "timeout_s": 60}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=HERE, help="the Tandem checkout ComfyUI loads")
    parser.add_argument("--prompts", type=int, default=20)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tandem-overhead-"))
    server = ComfyServer(Path(os.environ["COMFYUI_PATH"]), args.root, base / "comfyui", extra_nodes=[TEST_NODES])
    checkpoint = make_checkpoint("wan21_t2v", base)
    (server.diffusion_models_dir / checkpoint.name).symlink_to(checkpoint)
    server.start()
    try:
        init = init_node(server)
        for seed in range(args.prompts + 1):
            server.wait(server.post_prompt(tandem_prompt(init, checkpoint.name, (32, 32, 9), seed, "overhead")))
        seconds = [float(s) for s in re.findall(r"Prompt executed in ([\d.]+) seconds", server.log_text())]
        drivers = [p for p in psutil.Process(server.process.pid).children() if "driver_child" in " ".join(p.cmdline())]
        memory = (f"{drivers[0].memory_full_info().uss / 2**20:.0f} MB" if drivers else "none (the driver is ComfyUI)")
        print(f"{args.root}: first prompt {seconds[0]:.2f} s; next {len(seconds) - 1}: median "
              f"{statistics.median(seconds[1:]):.3f} s, min {min(seconds[1:]):.3f} s; driver process USS {memory}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
