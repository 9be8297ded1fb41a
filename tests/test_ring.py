"""Ring attention and USP (Ulysses × Ring) equal SDPA over the whole sequence.

The merge and the kernels are checked in this process; the layouts on four gloo processes started from here (see
attention_ranks.py), with token counts that need padding, a rank that holds only padding, and joint text attention
with the text first or last. A wrong merge, a padded key or text counted twice gives errors of order 0.1–1.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tandem.parallel.attention import resolve_backend
from tandem.parallel.process_group import free_port
from tandem.parallel.ring import attention_with_lse, math_attention_with_lse, merge

RANKS = Path(__file__).with_name("attention_ranks.py")
TOLERANCE = {"fp32": 1e-5, "bf16": 3e-2}


def qkv(tokens: int, keys: int, scale: float = 1.0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(2, 3, n, 16, generator=g) * scale).to(dtype) for n in (tokens, keys, keys)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_kernel_log_sum_exp_matches_math(dtype):
    q, k, v = qkv(11, 13, dtype=dtype)
    out, lse = attention_with_lse(q, k, v)
    expected_out, expected_lse = math_attention_with_lse(q, k, v)
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert out.dtype == dtype and lse.dtype == torch.float32
    assert (out.float() - expected_out.float()).abs().max() < tolerance
    assert (lse - expected_lse).abs().max() < 1e-4
    scores = q.float() @ k.float().transpose(-1, -2) / 4
    assert (lse - scores.logsumexp(-1)).abs().max() < 1e-4


@pytest.mark.parametrize("scale", [1.0, 30.0], ids=["plain", "large-scores"])
def test_merging_key_chunks_in_any_order_equals_sdpa(scale):
    """Scores of ±hundreds (scale 30) would overflow a merge that exponentiates before subtracting."""
    q, k, v = qkv(9, 20, scale)
    expected = F.scaled_dot_product_attention(q, k, v)
    cuts = [(12, 20), (0, 5), (5, 12)]
    acc = None
    for start, end in cuts:
        acc = merge(acc, attention_with_lse(q, k[:, :, start:end], v[:, :, start:end]))
    assert torch.isfinite(acc[0]).all()
    assert (acc[0] - expected).abs().max() < 1e-5 * expected.abs().max()
    assert (acc[1] - (q @ k.transpose(-1, -2) / 4).logsumexp(-1)).abs().max() < 1e-3 * scale


def test_other_backends_warn_that_ring_uses_sdpa_kernels():
    attend, warning = resolve_backend("flash", torch.device("cpu"), ring=True)
    assert "Ring degree > 1" in warning and "log-sum-exp" in warning
    assert resolve_backend("sdpa", torch.device("cpu"), ring=True)[1] is None


def run_ranks(world: int) -> list[dict]:
    """Run attention_ranks.py on ``world`` gloo processes; each one's errors, by case."""
    port = free_port()
    env = {**os.environ, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(RANKS), str(rank), str(world), str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in range(world)]
    try:
        outputs = [proc.communicate(timeout=300) for proc in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
    for rank, (proc, (out, err)) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"rank {rank} failed:\n{err[-4000:]}"
    return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


def test_ring_and_usp_layouts_equal_sdpa_on_four_ranks():
    per_rank = run_ranks(4)
    cases = per_rank[0].keys()
    worst = {case: max(errors[case] for errors in per_rank) for case in cases}
    for case, error in worst.items():
        print(f"{case}: max abs error {error:.1e}")
    assert len(worst) == 5 * (3 * 3 + 1)
    failed = {case: error for case, error in worst.items() if not error < TOLERANCE[case.split()[-1]]}
    assert not failed, failed


def test_eight_rank_layouts_equal_sdpa():
    """What an 8-GPU box runs: Ulysses 8 (8 heads), Ulysses 4 × Ring 2 (Wan2.1-1.3B's 12 heads), 2 × 4, Ring 8."""
    per_rank = run_ranks(8)
    worst = {case: max(errors[case] for errors in per_rank) for case in per_rank[0]}
    for case, error in worst.items():
        print(f"{case}: max abs error {error:.1e}")
    assert len(worst) == 4 * (3 * 3 + 1)
    failed = {case: error for case, error in worst.items() if not error < TOLERANCE[case.split()[-1]]}
    assert not failed, failed
