"""Join the torch.distributed group, prove it works, and carve out the sub-groups of the layout."""
import socket
from datetime import timedelta

import torch
import torch.distributed as dist

from .degrees import GroupConfig


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def join(host: str, port: int, rank: int, world: int, device: torch.device, timeout_s: float) -> None:
    """Every rank calls this with rank 0's address; every later collective times out after ``timeout_s``."""
    kwargs = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group(backend_for(device), init_method=f"tcp://{host}:{port}", rank=rank,
                            world_size=world, timeout=timedelta(seconds=timeout_s), **kwargs)


def self_test(device: torch.device, timeout_s: float) -> None:
    """An all-reduce that must sum to the world size within ``timeout_s``."""
    ones = torch.ones(1, device=device)
    dist.all_reduce(ones, async_op=True).wait(timeout=timedelta(seconds=timeout_s))
    if int(ones.item()) != dist.get_world_size():
        raise RuntimeError(f"communication self-test failed: all-reduce gave {ones.item()}, "
                           f"expected {dist.get_world_size()}")


def sequence_group(config: GroupConfig, rank: int) -> dist.ProcessGroup | None:
    """The group of ranks that share one sequence (Ulysses × Ring); consecutive ranks, so NVLink-near.

    Every rank must create every group, in the same order, even those it is not part of.
    """
    size = config.sequence_degree
    if size == 1:
        return None
    if size == dist.get_world_size():
        return dist.group.WORLD
    mine = None
    for start in range(0, dist.get_world_size(), size):
        group = dist.new_group(list(range(start, start + size)))
        if start <= rank < start + size:
            mine = group
    return mine


def host_group(host: str, rank: int) -> dist.ProcessGroup:
    """The ranks on this rank's host (by IP), which share one page cache and read each file once between them."""
    hosts: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, host)
    if len(set(hosts)) == 1:
        return dist.group.WORLD
    mine = None
    for name in sorted(set(hosts)):
        group = dist.new_group([r for r, h in enumerate(hosts) if h == name])
        if name == host:
            mine = group
    return mine
