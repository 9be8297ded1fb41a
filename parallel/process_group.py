"""Join the torch.distributed group and prove it works (the sub-groups of the layout: ``layout``)."""
import socket
from datetime import timedelta

import torch
import torch.distributed as dist



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
