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


def _new_group(ranks: list[int]) -> dist.ProcessGroup:
    return dist.group.WORLD if len(ranks) == dist.get_world_size() else dist.new_group(ranks)


def sequence_groups(config: GroupConfig, rank: int) -> tuple[dist.ProcessGroup | None, dist.ProcessGroup | None,
                                                              dist.ProcessGroup | None]:
    """This rank's (sequence, Ulysses, Ring) groups; None where the degree is 1 (all None without sequence parallel).

    A sequence group is U × R consecutive ranks, so NVLink-near. Inside it the Ulysses groups are the U consecutive
    ranks of each ring rank and the ring groups take every U-th rank (U 2 × R 2: Ulysses {0,1} {2,3}, Ring {0,2}
    {1,3}): the all-to-all, which moves every token of q, k, v and the output at once and waits for all of it, runs
    between the nearest ranks (one NVLink island or host), while the ring's point-to-point transfers hide behind
    attention compute and tolerate the farther link. Every rank creates every group, in the same order.
    """
    u, r = config.ulysses_degree, config.ring_degree
    if u * r == 1:
        return None, None, None
    mine: list[dist.ProcessGroup | None] = [None, None, None]
    for start in range(0, dist.get_world_size(), u * r):
        block = list(range(start, start + u * r))
        split = u > 1 and r > 1           # with one degree above 1, the sequence group is that degree's group
        ulysses = [block[j * u:(j + 1) * u] for j in range(r)] if split else []
        ring = [block[i::u] for i in range(u)] if split else []
        for kind, rank_lists in enumerate(([block], ulysses, ring)):
            for ranks in rank_lists:
                group = _new_group(ranks)
                if rank in ranks:
                    mine[kind] = group
    sequence, ulysses_group, ring_group = mine
    if r == 1:
        ulysses_group = sequence
    if u == 1:
        ring_group = sequence
    return sequence, ulysses_group, ring_group


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
