"""One rank of test_ring's gloo group (run as a script: ``attention_ranks.py RANK WORLD PORT``).

For every (Ulysses, Ring) layout of the group, every token count and every text placement, each rank feeds its slice
of the same random q, k, v to Tandem's sequence-parallel attention, gathers the output as the models do and compares
it with SDPA over the whole sequence. Prints one JSON line: the largest absolute error of each case on this rank.
Runs without ComfyUI: only ``tandem.parallel`` is imported.
"""
import importlib.util
import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
if "tandem" not in sys.modules:    # the checkout may be named anything: import it as ``tandem`` (as conftest does)
    _spec = importlib.util.spec_from_file_location("tandem", ROOT / "__init__.py",
                                                    submodule_search_locations=[str(ROOT)])
    sys.modules["tandem"] = importlib.util.module_from_spec(_spec)

from tandem.parallel import layout, process_group  # noqa: E402
from tandem.parallel.degrees import GroupConfig  # noqa: E402
from tandem.parallel.sequence import SequenceShard  # noqa: E402
from tandem.parallel.ulysses import joint_ulysses_attention, ulysses_attention  # noqa: E402

# (Ulysses, Ring) per world size; on 4 ranks (1, 2) and (2, 1) run as two groups of 2
LAYOUTS = {4: ((1, 2), (2, 1), (1, 4), (2, 2), (4, 1)),
           8: ((8, 1), (4, 2), (2, 4), (1, 8))}
TOKENS = (48, 45, 5)    # divisible by 4 and 8; padded by 3; 5 tokens: Ring 4/8's last ranks hold padding only
TEXT = {"none": None, "text-first": True, "text-last": False}
HEAD_DIM, BATCH, TEXT_TOKENS = 8, 2, 7
HEADS = 4               # main() sets it to the world size when that is larger (Ulysses 8 needs 8 heads)


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return F.scaled_dot_product_attention(q, k, v)


def heads_first(x: torch.Tensor) -> torch.Tensor:
    return x.unflatten(2, (HEADS, HEAD_DIM)).transpose(1, 2)


def case_error(shard: SequenceShard, tokens: int, text_first: bool | None, dtype: torch.dtype, seed: int) -> float:
    """Largest |parallel − SDPA| over the gathered image output and this rank's text output."""
    text = 0 if text_first is None else TEXT_TOKENS
    g = torch.Generator().manual_seed(seed)
    full = [torch.randn(BATCH, text + tokens, HEADS * HEAD_DIM, generator=g).to(dtype) for _ in range(3)]
    reference = sdpa(*(heads_first(t.float()) for t in full)).transpose(1, 2).flatten(2)
    txt, img = (slice(0, text), slice(text, None)) if text_first in (None, True) else \
        (slice(tokens, None), slice(0, tokens))
    shard.total = tokens
    if text_first is None:
        out = ulysses_attention(*(shard.split(t) for t in full), HEADS, shard, sdpa)
        local_txt, local_img = slice(0, 0), slice(0, None)
    else:
        parts = [(t[:, txt], shard.split(t[:, img])) for t in full]
        local = [torch.cat(p if text_first else p[::-1], dim=1) for p in parts]
        out = joint_ulysses_attention(*local, HEADS, text, text_first, shard, sdpa)
        local_txt, local_img = (slice(0, text), slice(text, None)) if text_first else \
            (slice(shard.local, None), slice(0, shard.local))
    image = shard.gather(out[:, local_img].contiguous())
    return max((image.float() - reference[:, img]).abs().max().item(),
               (out[:, local_txt].float() - reference[:, txt]).abs().max().item() if text else 0.0)


def main(rank: int, world: int, port: int) -> None:
    global HEADS
    HEADS = max(HEADS, world)
    process_group.join("127.0.0.1", port, rank, world, torch.device("cpu"), timeout_s=120)
    errors = {}
    for ulysses, ring in LAYOUTS[world]:
        config = GroupConfig(gpu_count=world, ulysses_degree=ulysses, ring_degree=ring)
        grid = layout.build(config, rank, ["127.0.0.1"] * world, "cpu")
        shard = SequenceShard(grid.sequence, ulysses_group=grid.ulysses, ring_group=grid.ring)
        for seed, tokens in enumerate(TOKENS):
            for name, text_first in TEXT.items():
                errors[f"U{ulysses}xR{ring} {tokens}-tokens {name} fp32"] = case_error(
                    shard, tokens, text_first, torch.float32, seed)
        errors[f"U{ulysses}xR{ring} 45-tokens text-first bf16"] = case_error(shard, 45, True, torch.bfloat16, 9)
    print(json.dumps(errors), flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*map(int, sys.argv[1:4]))
