"""Degree validation happens before any worker starts: every invalid setting gets one line naming the fix."""
import pytest

from tandem.parallel.degrees import (GroupConfig, TandemConfigError, validate, validate_available,
                                     validate_heads)

VALID = [
    GroupConfig(gpu_count=1, ulysses_degree=1),
    GroupConfig(gpu_count=2, ulysses_degree=2),
    GroupConfig(gpu_count=8, ulysses_degree=8),
    GroupConfig(gpu_count=4, ulysses_degree=4, attention="sage", timeout_s=10),
    GroupConfig(gpu_count=2, ulysses_degree=1, fsdp=True),
    GroupConfig(gpu_count=2, ulysses_degree=1, cfg_degree=2),
    GroupConfig(gpu_count=8, ulysses_degree=4, cfg_degree=2),
    GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, fsdp_cpu_offload=True),
    GroupConfig(gpu_count=2, ulysses_degree=1, ring_degree=2),
    GroupConfig(gpu_count=4, ulysses_degree=1, ring_degree=4),
    GroupConfig(gpu_count=4, ulysses_degree=2, ring_degree=2),
    GroupConfig(gpu_count=8, ulysses_degree=4, ring_degree=2),      # Wan2.1-1.3B's 12 heads on 8 GPUs
    GroupConfig(gpu_count=8, ulysses_degree=2, ring_degree=2, cfg_degree=2),
    GroupConfig(gpu_count=4, ulysses_degree=1, ring_degree=2, fsdp=True),
    GroupConfig(gpu_count=2, ulysses_degree=1),                      # data parallel 2
    GroupConfig(gpu_count=4, ulysses_degree=2),                      # data parallel 2 × Ulysses 2
    GroupConfig(gpu_count=8, ulysses_degree=2, cfg_degree=2),        # data parallel 2 × CFG 2 × Ulysses 2
]

INVALID = [
    (GroupConfig(gpu_count=0, ulysses_degree=1), "GPU count must be at least 1 (got 0): set it to 1 or more."),
    (GroupConfig(gpu_count=2, ulysses_degree=0), "Ulysses degree must be at least 1 (got 0): set it to 1 or more."),
    (GroupConfig(gpu_count=2, ring_degree=-1), "Ring degree must be at least 1 (got -1): set it to 1 or more."),
    (GroupConfig(gpu_count=2, cfg_degree=0), "CFG degree must be at least 1 (got 0): set it to 1 or more."),
    (GroupConfig(gpu_count=6, ulysses_degree=1, cfg_degree=3),
     "CFG degree must be 1 or 2 (got 3): positive and negative make at most 2 branches."),
    (GroupConfig(gpu_count=3, ulysses_degree=2),
     "GPU count 3 is not a multiple of CFG × Ulysses × Ring = 2: set GPU count to a multiple of 2 or lower the degrees."),
    (GroupConfig(gpu_count=4, ulysses_degree=2, cfg_degree=2, ring_degree=2),
     "GPU count 4 is not a multiple of CFG × Ulysses × Ring = 8: set GPU count to a multiple of 8 or lower the degrees."),
    (GroupConfig(gpu_count=2, fsdp_cpu_offload=True),
     "FSDP CPU offload needs FSDP: turn FSDP on or turn CPU offload off."),
    (GroupConfig(gpu_count=2, attention="xformers"),
     "Unknown attention backend 'xformers': choose one of sdpa, flash, sage."),
    (GroupConfig(gpu_count=2, timeout_s=5), "Collective timeout 5 s is too short: set it to 10 s or more."),
]


@pytest.mark.parametrize("config", VALID, ids=str)
def test_valid_settings_pass(config):
    validate(config)


@pytest.mark.parametrize("config,message", INVALID, ids=[m.split(":")[0] for _, m in INVALID])
def test_invalid_settings_name_the_fix(config, message):
    with pytest.raises(TandemConfigError) as error:
        validate(config)
    assert str(error.value) == message
    assert "\n" not in str(error.value)


def test_gpu_count_above_what_ray_offers():
    validate_available(GroupConfig(gpu_count=2), 2, "GPUs")
    with pytest.raises(TandemConfigError, match=r"^GPU count 4 exceeds the 2 GPUs Ray can give: set GPU count to 2 or fewer\.$"):
        validate_available(GroupConfig(gpu_count=4, ulysses_degree=4), 2, "GPUs")


def test_ulysses_must_divide_heads():
    validate_heads(4, 40)
    with pytest.raises(TandemConfigError) as error:
        validate_heads(3, 40)
    assert str(error.value) == ("Ulysses degree 3 does not divide the model's 40 attention heads: use one of "
                                "1, 2, 4, 5, 8, 10, 20, 40 (add Ring degree for more GPUs).")


def test_ring_degree_need_not_divide_heads():
    """Only Ulysses splits heads: Ulysses 4 × Ring 2 runs a 12-head model on 8 GPUs, which Ulysses 8 cannot."""
    validate(GroupConfig(gpu_count=8, ulysses_degree=4, ring_degree=2))
    validate_heads(4, 12)
    with pytest.raises(TandemConfigError):
        validate_heads(8, 12)
