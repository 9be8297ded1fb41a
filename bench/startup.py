"""What Tandem adds to the first prompt after ComfyUI starts, and where it goes (issue: reliability and start-up).

    python bench/startup.py [--settle 10] [--gpu]

Two fresh ComfyUI servers, one after the other, on the same tiny Wan 2.1 file and the same graph: ComfyUI alone
(UNETLoader → KSamplerAdvanced) and Tandem's drop-in path (Tandem Init, one worker → Tandem Model Loader →
KSamplerAdvanced). Each server is started, left ``--settle`` seconds (the moment a user takes to queue a prompt;
what Tandem starts in the background when ComfyUI loads it runs then), and sent the prompt twice. Printed: ComfyUI's
own "Prompt executed in" for the first and second prompt, the difference, and Tandem Init's log line of where the
group start's seconds went. A tiny model keeps the weights' load out of the difference: Tandem's workers load a
file as fast as ComfyUI (see the load columns of the matrix tables).
"""
import argparse
import os
import re
import tempfile
import time
from pathlib import Path

from driver_overhead import HERE, init_node

from tandem.tests.checkpoints import make_checkpoint  # noqa: E402
from tandem.tests.server import TEST_NODES, ComfyServer  # noqa: E402

SAMPLER = {"add_noise": "enable", "steps": 2, "cfg": 5.0, "sampler_name": "euler", "scheduler": "simple",
           "start_at_step": 0, "end_at_step": 10000, "return_with_leftover_noise": "disable"}


def prompt(model: dict, unet_name: str, seed: int) -> dict:
    """Conditioning → KSamplerAdvanced on ``model`` (a node that loads ``unet_name``) → SaveLatent."""
    return {
        **model,
        "pos": {"class_type": "TandemTestConditioning", "inputs": {"seed": 1, "tokens": 12, "width": 4096}},
        "neg": {"class_type": "TandemTestConditioning", "inputs": {"seed": 2, "tokens": 7, "width": 4096}},
        "latent": {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": 64, "height": 64, "length": 9, "batch_size": 1}},
        "sample": {"class_type": "KSamplerAdvanced",
                   "inputs": {**SAMPLER, "model": ["model", 0], "noise_seed": seed, "positive": ["pos", 0],
                              "negative": ["neg", 0], "latent_image": ["latent", 0]}},
        "save": {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "startup"}},
    }


def run(label: str, base: Path, checkpoint: Path, gpu: bool, settle: float) -> list[float]:
    server = ComfyServer(Path(os.environ["COMFYUI_PATH"]), HERE, base / label, extra_nodes=[TEST_NODES], cpu=not gpu)
    (server.diffusion_models_dir / checkpoint.name).symlink_to(checkpoint)
    server.start()
    try:
        time.sleep(settle)
        if label == "comfyui":
            model = {"model": {"class_type": "UNETLoader",
                               "inputs": {"unet_name": checkpoint.name, "weight_dtype": "default"}}}
        else:
            init = init_node(server)
            init["inputs"].update(gpu_count=1, ulysses_degree=1, timeout_s=120)
            model = {"init": init, "model": {"class_type": "TandemModelLoader", "inputs": {
                "group": ["init", 0], "unet_name": checkpoint.name, "weight_dtype": "default"}}}
        for seed in (1, 2):
            server.wait(server.post_prompt(prompt(model, checkpoint.name, seed)))
        log = server.log_text()
        seconds = [float(s) for s in re.findall(r"Prompt executed in ([\d.]+) seconds", log)]
        phases = re.findall(r"Tandem Init: (.*)", log)
        print(f"{label}: ComfyUI started in {server.startup_s:.1f} s; first prompt {seconds[0]:.2f} s, second "
              f"{seconds[1]:.2f} s{'; ' + phases[0] if phases else ''}", flush=True)
        return seconds
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--settle", type=float, default=10.0, help="seconds between ComfyUI's start and the prompt")
    parser.add_argument("--gpu", action="store_true", help="ComfyUI on its GPU (else --cpu; Tandem's workers "
                                                           "follow Ray, which sees the GPUs either way)")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="tandem-startup-"))
    checkpoint = make_checkpoint("wan21_t2v", base)
    alone = run("comfyui", base, checkpoint, args.gpu, args.settle)
    tandem = run("tandem", base, checkpoint, args.gpu, args.settle)
    print(f"Tandem adds {tandem[0] - alone[0]:+.2f} s to the first prompt, {tandem[1] - alone[1]:+.2f} s to the "
          "second")


if __name__ == "__main__":
    main()
