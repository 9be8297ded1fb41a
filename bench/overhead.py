"""Where a repeat prompt's time goes on the drop-in path: Tandem Model Loader's MODEL sampled by KSamplerAdvanced.

    python bench/overhead.py [--model flux-12b] [--prompts 8] [--steps 1]

The group's start and the load, then per prompt (the first, and the median repeat): the host's wall time, packing the job (``workers.job.pack``), the worker's setup (unpacking, applying the
patcher state) and run (``outer_sample`` with its steps), and the steps themselves; what is left is Ray's round
trips, the poll for each step's callback and returning the latent. Tandem on one worker, weights from the benchmark
cache (generated if missing).
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

from _tandem import import_tandem
from cell import conditioning, ksampler
from matrix import MODELS
from weights import DEFAULT_CACHE, cached


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="flux-12b", choices=list(MODELS))
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = p.parse_args()
    import_tandem()
    from tandem.nodes.loader import load
    from tandem.parallel.degrees import GroupConfig
    from tandem.workers import group as groups
    from tandem.workers import job as jobs

    model = MODELS[args.model]
    path = str(cached(args.model, args.cache))
    packing = []
    pack = jobs.pack

    def timed_pack(*a, **k):
        t = time.perf_counter()
        try:
            return pack(*a, **k)
        finally:
            packing.append(time.perf_counter() - t)

    jobs.pack = timed_pack
    t = time.perf_counter()
    group = groups.start(GroupConfig(gpu_count=1, ulysses_degree=1, timeout_s=600))
    start_s = time.perf_counter() - t
    t = time.perf_counter()
    tandem_model = load(group, path)
    load_s = time.perf_counter() - t
    inputs = conditioning(model, model.size)
    rows = []
    for _ in range(args.prompts + 1):
        t = time.perf_counter()
        ksampler(tandem_model, inputs, model.cfg, args.steps)
        wall = time.perf_counter() - t
        stats = group.last_stats[0]
        rows.append({"wall": wall, "pack": packing[-1], "setup": stats["setup_s"], "run": stats["run_s"],
                     "steps": sum(stats["step_s"])})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    first, rows = rows[0], rows[1:]
    median = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
    for row in (first, median):
        row["rest"] = row["wall"] - row["pack"] - row["setup"] - row["run"]
    print(f"{args.model} {model.size} on {device}: group start {start_s:.2f} s, load {load_s:.2f} s")
    print(f"  first {args.steps}-step prompt: " + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in first.items()))
    print(f"  repeat {args.steps}-step prompt, median of {args.prompts}: "
          + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in median.items()))
    groups.shutdown()


if __name__ == "__main__":
    main()
