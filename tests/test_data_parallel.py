"""Data parallel: the latent batch split over replicas equals single-process ComfyUI sampling the whole batch."""
import pytest
import torch

from tandem.parallel.degrees import GroupConfig
from tandem.tests.test_wan_usp import STEPS, request, single_process, start_load_sample

SHAPE = (3, 6, 10)
LAYOUTS = {
    "dp2": (GroupConfig(gpu_count=2, ulysses_degree=1, timeout_s=60), 3),              # 2 + 1 rows: uneven
    "dp2+fsdp": (GroupConfig(gpu_count=2, ulysses_degree=1, fsdp=True, timeout_s=60), 2),
}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_batch_split_over_replicas_equals_single_process(_tandem_session, checkpoint, layout):
    config, batch = LAYOUTS[layout]
    path = str(checkpoint("wan21_t2v"))
    req = request("wan21_t2v", SHAPE, "euler")
    req.latent = {"samples": torch.zeros(batch, *req.latent["samples"].shape[1:])}
    expected = single_process(path, "wan21_t2v", req)

    latent, all_stats, _ = start_load_sample(config, path, req)
    error = ((latent - expected).norm() / expected.norm()).item()
    rows = [stats["rows"] for stats in all_stats]
    print(f"{layout}, batch {batch}: relative error {error:.2e}, latent rows the DiT ran per worker {rows}")
    assert latent.shape == expected.shape and error < 1e-4
    per_replica = -(-batch // config.dp_degree)                  # each replica: its rows, cond + uncond, every step
    assert rows == [per_replica * 2 * STEPS] * config.gpu_count
