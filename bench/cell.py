"""One cell of the benchmark matrix, in its own process: one model, one mode, one GPU count.

    python bench/cell.py --model M --mode MODE --gpus N --size WxHxF --steps 6 --weights FILE --reference FILE
                         --result FILE

ComfyUI alone and Tandem go through the same protocol (``measure``) and the same sampler node (ComfyUI's
KSamplerAdvanced, ``ksampler``): they differ only in the MODEL, ComfyUI's Load Diffusion Model's or Tandem Model
Loader's, whose sampling runs on the workers. So the CPU run in CI exercises what the GPU run does. The result is
always written, as JSON with status ok, unsupported (Tandem refused the settings, with its message) or failed.
"""
import argparse
import json
import os
import statistics
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch

from _tandem import import_tandem
from matrix import MODELS, MODES, TEXT_MASK, Model, parse_size


def conditioning(model: Model, size: str) -> dict:
    """Seeded stand-ins for the text encoder's output (distinct positive and negative) and an empty latent.

    Each ``extra_cond`` entry is a seeded tensor of its width ([1, width]), its shape after the batch, or the shape its
    function gives for the size; ``TEXT_MASK`` is the attention mask over the text tokens, all ones."""
    g = torch.Generator().manual_seed(1)
    dims = parse_size(size)

    def extra(spec) -> torch.Tensor:
        if spec == TEXT_MASK:
            return torch.ones(1, model.context[0], dtype=torch.long)
        shape = spec(*dims) if callable(spec) else (1, *spec) if isinstance(spec, tuple) else (1, spec)
        return torch.randn(shape, generator=g)

    def cond() -> list:
        extras = {name: extra(spec) for name, spec in model.extra_cond.items()}
        return [[torch.randn(1, *model.context, generator=g), extras]]

    return dict(positive=cond(), negative=cond(), latent={"samples": torch.zeros(model.latent(*dims))})


def ksampler(model, inputs: dict, cfg: float, steps: int, on_step: Callable[[], None] | None = None
             ) -> torch.Tensor:
    """What ComfyUI's KSamplerAdvanced node runs (``nodes.common_ksampler``: its noise, ``comfy.sample.sample``, a
    per-step callback) on ``model`` with ``conditioning``'s inputs (seed 42, euler, simple, every step, noise added),
    under inference mode as ComfyUI's executor runs nodes: a Tandem MODEL samples on its workers, any other in this
    process. ``on_step`` is called at each step's callback (where ComfyUI's UI updates). ComfyUI's ``nodes`` module
    itself is not imported: it needs PyAV, which the GPU machines lack."""
    import comfy.sample

    with torch.inference_mode():
        latent = comfy.sample.fix_empty_latent_channels(model, inputs["latent"]["samples"])
        noise = comfy.sample.prepare_noise(latent, 42)
        return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", inputs["positive"], inputs["negative"],
                                   latent, denoise=1.0, callback=lambda *_: on_step and on_step(), disable_pbar=True,
                                   seed=42)


def host_ram(pids: list[int]) -> dict:
    """Private (anonymous) memory of each process that holds the model, and the host's page cache, in GiB."""
    def field(path: str, name: str) -> float:
        with open(path) as f:
            return next(int(line.split()[1]) for line in f if line.startswith(name + ":")) / 2**20

    return {"private_gb": [field(f"/proc/{pid}/smaps_rollup", "Anonymous") for pid in pids],
            "page_cache_gb": field("/proc/meminfo", "Cached")}


def comfy_gguf_model(path: str):
    """A GGUF file loaded as ComfyUI-GGUF's Unet Loader (GGUF) loads it: its reader and its quantized ops under
    ComfyUI's own loader. Its ``nodes`` module needs ComfyUI's ``nodes`` (PyAV, absent on the GPU machines), so its
    ``GGUFModelPatcher`` (LoRA on quantized weights, low-VRAM mmap release) is left out: a full load without LoRA does
    not use it. The package comes from $COMFYUI_GGUF_PATH (a checkout of city96/ComfyUI-GGUF)."""
    import importlib.util
    import sys

    import comfy.sd

    root = Path(os.environ["COMFYUI_GGUF_PATH"])
    spec = importlib.util.spec_from_file_location("comfyui_gguf", root / "__init__.py",
                                                  submodule_search_locations=[str(root)])
    sys.modules["comfyui_gguf"] = importlib.util.module_from_spec(spec)    # its __init__ would import nodes
    from comfyui_gguf.loader import gguf_sd_loader
    from comfyui_gguf.ops import GGMLOps

    return comfy.sd.load_diffusion_model_state_dict(gguf_sd_loader(path),
                                                    model_options={"custom_operations": GGMLOps()})


class ComfyUIAlone:
    """The baseline: ComfyUI's Load Diffusion Model (``comfy.sd.load_diffusion_model``) and KSamplerAdvanced in this
    process, on one GPU (or the CPU); each step ends at its progress-bar update, after a CUDA synchronisation."""

    def start(self) -> None:
        """Nothing to start: ComfyUI is already running when a prompt arrives."""

    def load(self, path: str, weight_dtype: str) -> None:
        import comfy.sd
        from tandem.parallel.weights import model_options

        if path.endswith(".gguf"):
            self.model = comfy_gguf_model(path)
        else:    # what Load Diffusion Model does with its weight_dtype
            self.model = comfy.sd.load_diffusion_model(path, model_options=model_options(weight_dtype))

    def pids(self) -> list[int]:
        return [os.getpid()]

    def sample(self, inputs: dict, cfg: float, steps: int) -> tuple[torch.Tensor, dict]:
        cuda = torch.cuda.is_available()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        ends = [time.perf_counter()]

        def on_step():
            if cuda:
                torch.cuda.synchronize()
            ends.append(time.perf_counter())

        samples = ksampler(self.model, inputs, cfg, steps, on_step)
        return samples, {"step_s": [b - a for a, b in zip(ends, ends[1:])],
                         "peak_vram_gb": [torch.cuda.max_memory_allocated() / 2**30 if cuda else None]}

    def close(self) -> None:
        """The process exits after the cell."""


class Tandem:
    """A Tandem group driven from this process as ComfyUI drives it: Tandem Model Loader's MODEL
    (``tandem.nodes.loader.load``, a stand-in whose weights live in the workers) sampled by KSamplerAdvanced; step
    times (rank 0's) and peak VRAM (every rank's) come from the workers' statistics (``group.last_stats``)."""

    def __init__(self, config):
        self.config = config

    def start(self) -> None:
        from tandem.workers import group

        self.group = group.start(self.config)

    def load(self, path: str, weight_dtype: str) -> None:
        from tandem.nodes.loader import load

        self.model = load(self.group, path, weight_dtype)

    def pids(self) -> list[int]:
        return [info["pid"] for info in self.group.workers]

    def sample(self, inputs: dict, cfg: float, steps: int) -> tuple[torch.Tensor, dict]:
        samples = ksampler(self.model, inputs, cfg, steps)
        stats = self.group.last_stats
        return samples, {"step_s": stats[0]["step_s"], "peak_vram_gb": [s.get("peak_vram_gb") for s in stats]}

    def close(self) -> None:
        from tandem.workers import group

        group.shutdown()


def measure(runner, model: Model, size: str, steps: int, weights: str, repeats: int = 5, weight_dtype: str = "default"
            ) -> tuple[dict, torch.Tensor]:
    """Start, load, then the prompts: 1 step cold (the first prompt; ComfyUI moves the weights to the GPU here), the
    same again ``repeats`` times (repeat prompts: their median wall time is ``repeat_prompt_s``, and what it costs
    beyond its one step, ``prompt_overhead_s``, is the per-prompt overhead), 2 steps, and ``steps`` steps, whose
    per-step times give s/step."""
    clock = time.perf_counter
    r = {}
    t = clock()
    runner.start()
    r["start_s"] = clock() - t
    r["host_ram_before_load"] = host_ram(runner.pids())
    t = clock()
    runner.load(weights, weight_dtype)
    r["load_s"] = clock() - t
    r["host_ram_after_load"] = host_ram(runner.pids())
    inputs = conditioning(model, size)
    wall = {}
    for name, n in (("first", 1), *((f"repeat {i}", 1) for i in range(repeats)), ("short", 2), ("timed", steps)):
        t = clock()
        samples, stats = runner.sample(inputs, model.cfg, n)
        wall[name] = clock() - t
    again = [wall[f"repeat {i}"] for i in range(repeats)]
    r.update(first_prompt_s=r["start_s"] + r["load_s"] + wall["first"], repeat_prompt_s=statistics.median(again),
             repeat_prompt_runs_s=again, t2_s=wall["short"], tN_s=wall["timed"], step_s=stats["step_s"],
             s_per_step=statistics.median(stats["step_s"]),
             s_per_step_diff=(wall["timed"] - wall["short"]) / (steps - 2),
             peak_vram_gb=stats["peak_vram_gb"], host_ram_after_sampling=host_ram(runner.pids()))
    r["prompt_overhead_s"] = r["repeat_prompt_s"] - r["s_per_step"]
    return r, samples


def one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:500]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", choices=MODELS, required=True)
    p.add_argument("--mode", choices=MODES, required=True)
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--size", required=True)
    p.add_argument("--steps", type=int, required=True)
    p.add_argument("--weights", required=True)
    p.add_argument("--weight-dtype", default="default", help="Load Diffusion Model's / Tandem Model Loader's")
    p.add_argument("--reference", required=True, help="ComfyUI's latent: written by the comfyui cell, read by others")
    p.add_argument("--result", required=True)
    p.add_argument("--repeats", type=int, default=5, help="repeat 1-step prompts (median: repeat_prompt_s)")
    args = p.parse_args()
    import_tandem()
    from tandem.parallel.degrees import GroupConfig, TandemConfigError

    mode = MODES[args.mode]
    runner = ComfyUIAlone() if mode.group is None else Tandem(GroupConfig(**mode.group(args.gpus)))
    try:
        result, samples = measure(runner, MODELS[args.model], args.size, args.steps, args.weights,
                                  args.repeats, args.weight_dtype)
        result["status"] = "ok"
        if mode.group is None:
            torch.save(samples, args.reference)
        elif Path(args.reference).exists():
            reference = torch.load(args.reference).float()
            result["rel_err_vs_comfyui"] = ((samples.float() - reference).norm() / reference.norm()).item()
    except TandemConfigError as e:
        result = {"status": "unsupported", "message": str(e)}
    except Exception as e:          # the cell fails, the matrix goes on; the traceback is in the cell's log
        traceback.print_exc()
        result = {"status": "failed", "message": one_line(e)}
    finally:
        runner.close()
    Path(args.result).write_text(json.dumps(result))


if __name__ == "__main__":
    main()
