"""Eight workers (gloo, CPU): the layouts of an 8-GPU box that 4 ranks cannot show equal single-process ComfyUI.

Ulysses 4 × Ring 2 is how a 12-head model (Wan2.1-1.3B) uses 8 GPUs: heads traded within {0..3} and {4..7}, K/V
passed around {0,4}, {1,5}, ... CFG 2 × Ulysses 4 + FSDP runs positive and negative on two groups of four, each
sharding the weights over all eight. Ulysses 8 and Ring 8 are checked at the attention level (test_ring.py).
Each layout starts its own 8 workers (~40 s on two cores).
"""
import math

import pytest

from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import build_model
from tandem.tests.test_wan_usp import request, single_process
from tandem.workers import group as groups

SHAPE = (3, 6, 10)           # 45 tokens: padded to 48 for 8 ranks
FAMILY = "wan21_t2v_8heads"
LAYOUTS = {
    "ulysses4xring2": GroupConfig(gpu_count=8, ulysses_degree=4, ring_degree=2, timeout_s=120),
    "cfg2xulysses4+fsdp8": GroupConfig(gpu_count=8, ulysses_degree=4, cfg_degree=2, fsdp=True, timeout_s=120),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_eight_workers_equal_single_process(_tandem_session, checkpoint, layout):
    config = LAYOUTS[layout]
    path = str(checkpoint(FAMILY))
    req = request("wan21_t2v", SHAPE, "euler")
    expected = single_process(path, FAMILY, req)

    group = groups.start(config)
    infos = group.call("load", path, "default")
    results = group.call("sample", infos[0]["key"], req)
    latent = results[0][0]
    error = ((latent - expected).norm() / expected.norm()).item()
    print(f"{layout}: relative error {error:.2e}, block tokens {[r[1].get('block_tokens') for r in results]}, "
          f"local parameters {[i['local_params'] for i in infos]}")
    assert all(r[0] is None for r in results[1:]) and error < 1e-4
    assert all(r[1]["block_tokens"] == [math.ceil(45 / config.sequence_degree)] for r in results)
    if config.fsdp:
        total = sum(p.numel() for p in build_model(FAMILY).model.diffusion_model.parameters())
        assert all(0.08 * total <= i["local_params"] <= 0.18 * total for i in infos)
