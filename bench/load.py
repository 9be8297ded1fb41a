"""How the GPUs of one host share reading a checkpoint: load time and host RAM for each weight fan-out.

    python bench/load.py [--model wan2.1-14b] [--gpus 2] [--cache DIR]

One Tandem group (Ulysses over ``--gpus``, full weights on every GPU) loads the same file once per fan-out, from a
warm page cache; each copy stays on the GPUs (Tandem caches a model per file and fan-out), so the GPUs must hold
three copies:
``every-rank`` (each GPU reads the whole file), ``rank0`` (GPU 0 reads it and broadcasts each tensor) and
``striped`` (each GPU reads 1/N and broadcasts it; Tandem's default). Prints a Markdown table and writes it with
the raw numbers to $OUT (or bench/out) as load.md / load.json.
"""
import argparse
import json
import os
import time
from pathlib import Path


from _tandem import import_tandem
from cell import host_ram
from matrix import MODELS
from run import find_comfyui
from weights import DEFAULT_CACHE, cached

HERE = Path(__file__).resolve().parent
FANOUTS = ("every-rank", "rank0", "striped")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="wan2.1-14b", choices=MODELS)
    p.add_argument("--gpus", type=int, default=2)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or HERE / "out"))
    args = p.parse_args()
    find_comfyui()
    path = cached(args.model, args.cache)
    size_gb = path.stat().st_size / 1e9
    with open(path, "rb") as f:                     # warm the page cache, as a second prompt would find it
        while f.read(1 << 28):
            pass
    import_tandem()
    from tandem.parallel.degrees import GroupConfig
    from tandem.workers import group as groups

    group = groups.start(GroupConfig(gpu_count=args.gpus, ulysses_degree=args.gpus))
    pids = [w["pid"] for w in group.workers]
    rows = []
    try:
        for fanout in FANOUTS:
            start = time.perf_counter()
            infos = group.call("load", str(path), "default", None, fanout)
            rows.append({"fanout": fanout, "load_s": time.perf_counter() - start,
                         "read_gb": [size_gb if i["read_bytes"] is None else i["read_bytes"] / 1e9 for i in infos], **host_ram(pids)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        groups.shutdown()
    lines = [f"{args.model}, {size_gb:.1f} GB, {args.gpus} GPUs, full weights on each (Ulysses {args.gpus})", "",
             "| fan-out | load s | GB read per GPU | private RAM GB per worker | page cache GB |", "|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['fanout']} | {r['load_s']:.2f} | {' / '.join(f'{g:.1f}' for g in r['read_gb'])} | "
                     f"{' / '.join(f'{g:.2f}' for g in r['private_gb'])} | {r['page_cache_gb']:.1f} |")
    text = "\n".join(lines)
    print(text)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "load.md").write_text(text + "\n")
    (args.out / "load.json").write_text(json.dumps({"model": args.model, "file_gb": size_gb, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
