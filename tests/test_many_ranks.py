"""Four and eight workers (gloo, CPU): the degree combinations of 4- and 8-GPU boxes equal single-process ComfyUI.

Four workers, a 4-head Wan: Ulysses 4 splits the tokens four ways; Ulysses 2 × 2 runs two sequence groups with FSDP
over all four; FSDP alone shards every tensor four ways; CFG 2 × Ulysses 2 runs positive and negative on two pairs;
Ulysses 2 × Ring 2 trades heads within {0,1} and {2,3} and passes K/V around {0,2} and {1,3}.
Eight workers, an 8-head Wan (the layouts 4 ranks cannot show; each starts its 8 workers in ~40 s on two cores):
Ulysses 4 × Ring 2 is how a 12-head model (Wan2.1-1.3B) uses 8 GPUs, heads traded within {0..3} and {4..7}, K/V
passed around {0,4}, {1,5}, ...; CFG 2 × Ulysses 4 + FSDP runs positive and negative on two groups of four, each
sharding the weights over all eight. Ulysses 8 and Ring 8 are checked at the attention level (test_ring.py).
"""
import math

import pytest

from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import build_model
from tandem.tests.test_wan_usp import relative, request, single_process, start_load_sample

SHAPE = (3, 6, 10)           # 45 tokens: padded to 48 for 4 or 8 ranks
FAMILY = {4: "wan21_t2v_4heads", 8: "wan21_t2v_8heads"}
LAYOUTS = {
    "ulysses4": GroupConfig(gpu_count=4, ulysses_degree=4, timeout_s=120),
    "ulysses2x2+fsdp4": GroupConfig(gpu_count=4, ulysses_degree=2, fsdp=True, timeout_s=120),
    "fsdp4": GroupConfig(gpu_count=4, ulysses_degree=1, fsdp=True, timeout_s=120),
    "cfg2xulysses2": GroupConfig(gpu_count=4, ulysses_degree=2, cfg_degree=2, timeout_s=120),
    "ulysses2xring2": GroupConfig(gpu_count=4, ulysses_degree=2, ring_degree=2, timeout_s=120),
    "ulysses4xring2": GroupConfig(gpu_count=8, ulysses_degree=4, ring_degree=2, timeout_s=120),
    "cfg2xulysses4+fsdp8": GroupConfig(gpu_count=8, ulysses_degree=4, cfg_degree=2, fsdp=True, timeout_s=120),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_workers_equal_single_process(_tandem_session, checkpoint, layout):
    config = LAYOUTS[layout]
    family = FAMILY[config.gpu_count]
    path = str(checkpoint(family))
    req = request("wan21_t2v", SHAPE, "euler")
    expected = single_process(path, family, req)

    latent, stats, infos = start_load_sample(config, path, req)
    error = relative(latent, expected)
    print(f"{layout}: relative error {error:.2e}, block tokens {[s.get('block_tokens') for s in stats]}, "
          f"local parameters {[i['local_params'] for i in infos]}")
    assert len(stats) == config.gpu_count and latent.shape == expected.shape and error < 1e-4
    if config.sequence_degree > 1:
        assert all(s["block_tokens"] == [math.ceil(45 / config.sequence_degree)] for s in stats)
    if config.fsdp:
        total = sum(p.numel() for p in build_model(family).model.diffusion_model.parameters())
        assert all(0.8 / config.gpu_count <= i["local_params"] / total <= 1.2 / config.gpu_count for i in infos)
