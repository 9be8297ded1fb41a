"""Parallel layout of a Tandem group and its validation, done before any worker starts."""
from dataclasses import asdict, dataclass

ATTENTION_BACKENDS = ("sdpa", "flash", "sage")


class TandemConfigError(ValueError):
    """A setting the user must change; the message names the fix."""


class TandemError(RuntimeError):
    """One line for the ComfyUI node: what failed where, and what to do."""


@dataclass(frozen=True)
class GroupConfig:
    """Everything the Tandem Init node decides. world = dp × cfg × ulysses × ring."""

    gpu_count: int = 2
    ulysses_degree: int = 2
    ring_degree: int = 1
    cfg_degree: int = 1
    fsdp: bool = False
    fsdp_cpu_offload: bool = False
    attention: str = "sdpa"
    timeout_s: int = 600
    ray_address: str = "local"

    @property
    def world_size(self) -> int:
        return self.gpu_count

    @property
    def sequence_degree(self) -> int:
        return self.ulysses_degree * self.ring_degree

    @property
    def dp_degree(self) -> int:
        return self.gpu_count // (self.cfg_degree * self.sequence_degree)

    def as_dict(self) -> dict:
        return asdict(self)


def validate(config: GroupConfig) -> None:
    """Raise TandemConfigError with a one-line fix for the first invalid setting."""
    for name, value in (("GPU count", config.gpu_count), ("Ulysses degree", config.ulysses_degree),
                        ("Ring degree", config.ring_degree), ("CFG degree", config.cfg_degree)):
        if value < 1:
            raise TandemConfigError(f"{name} must be at least 1 (got {value}): set it to 1 or more.")
    if config.cfg_degree not in (1, 2):
        raise TandemConfigError(
            f"CFG degree must be 1 or 2 (got {config.cfg_degree}): positive and negative make at most 2 branches.")
    per_job = config.cfg_degree * config.sequence_degree
    if config.gpu_count % per_job:
        raise TandemConfigError(
            f"GPU count {config.gpu_count} is not a multiple of CFG × Ulysses × Ring = {per_job}: "
            f"set GPU count to a multiple of {per_job} or lower the degrees.")
    if config.fsdp_cpu_offload and not config.fsdp:
        raise TandemConfigError("FSDP CPU offload needs FSDP: turn FSDP on or turn CPU offload off.")
    if config.attention not in ATTENTION_BACKENDS:
        raise TandemConfigError(
            f"Unknown attention backend {config.attention!r}: choose one of {', '.join(ATTENTION_BACKENDS)}.")
    if config.timeout_s < 10:
        raise TandemConfigError(f"Collective timeout {config.timeout_s} s is too short: set it to 10 s or more.")


def validate_available(config: GroupConfig, available: int, unit: str) -> None:
    """GPU count against what the Ray cluster offers (``unit`` is "GPUs" or "CPUs")."""
    if config.gpu_count > available:
        raise TandemConfigError(
            f"GPU count {config.gpu_count} exceeds the {available} {unit} Ray can give: "
            f"set GPU count to {available} or fewer.")


def validate_heads(ulysses_degree: int, num_heads: int) -> None:
    """Ulysses gives each rank num_heads / degree whole heads."""
    if num_heads % ulysses_degree:
        valid = [d for d in range(1, num_heads + 1) if num_heads % d == 0]
        raise TandemConfigError(
            f"Ulysses degree {ulysses_degree} does not divide the model's {num_heads} attention heads: "
            f"use one of {', '.join(map(str, valid))} (add Ring degree for more GPUs).")
