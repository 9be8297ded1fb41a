"""FSDP2 sharding of a DiT: ``fully_shard`` per transformer block, then the root, in the checkpoint's own dtypes.

The mesh is the layout's (``parallel/layout.fsdp_mesh``): 1-D on one host; on several, 2-D (replicate, shard), which
``fully_shard`` runs as HSDP, each host holding one whole copy of the weights sharded over its own ranks.

FSDP2 gathers one flat buffer per block, so a block's parameters must share a dtype. Mixed-dtype ("scaled fp8")
blocks keep their majority dtype sharded and the others (scales, biases) replicated via ``ignored_params``.
"""
from collections import Counter

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard
from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather
from torch.distributed.tensor import DTensor


def _odd_dtype_params(module: torch.nn.Module, skip: set[int]) -> set[torch.nn.Parameter]:
    """Parameters of ``module`` (outside already-sharded submodules) whose dtype holds fewer elements than another's."""
    params = [p for p in module.parameters() if id(p) not in skip]
    if not params:
        return set()
    elements = Counter()
    for p in params:
        elements[p.dtype] += p.numel()
    majority = elements.most_common(1)[0][0]
    return {p for p in params if p.dtype != majority}


# torch ≥ 2.13 renamed all_gather_into_tensor; the GPU image has torch 2.11.
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


class ByteAllGather(AllGather):
    """FSDP2's all-gather on the bytes of the shards: gloo has no float8 dtype, and bytes are exact for any dtype."""

    def allocate(self, size, *, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        return torch.empty(*size, dtype=dtype, device=device)

    def __call__(self, output_tensor: torch.Tensor, input_tensor: torch.Tensor, group: dist.ProcessGroup,
                 async_op: bool = False) -> dist.Work | None:
        return _all_gather(output_tensor.view(torch.uint8), input_tensor.view(torch.uint8), group=group,
                           async_op=async_op)


def shard_of(param: DTensor) -> tuple[int, int]:
    """(how many dim-0 shards, which one is this rank's) of a parameter FSDP2 sharded: along the mesh dimension it is
    sharded on (HSDP's last; the first only replicates)."""
    dim = next(i for i, placement in enumerate(param.placements) if placement.is_shard())
    return param.device_mesh.size(dim), param.device_mesh.get_local_rank(dim)


def transformer_blocks(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of any DiT: the items of its top-level ModuleLists, for models whose family has no adapter
    (those that have one name their block lists in ``FSDP_BLOCKS``)."""
    blocks = []
    for child in root.children():
        if isinstance(child, torch.nn.ModuleList):
            blocks.extend(child)
    return blocks


def shard(root: torch.nn.Module, blocks: list[torch.nn.Module], mesh: DeviceMesh, cpu_offload: bool) -> None:
    """Shard ``root`` (still on ``meta``) over ``mesh``; the next block's all-gather is issued one block early."""
    policy = CPUOffloadPolicy(pin_memory=torch.cuda.is_available()) if cpu_offload else OffloadPolicy()
    done: set[int] = set()
    for block in blocks:
        _shard_one(block, mesh, policy, _odd_dtype_params(block, done))
        done |= {id(p) for p in block.parameters()}
    _shard_one(root, mesh, policy, _odd_dtype_params(root, done), reshard_after_forward=False)
    for block, following in zip(blocks, blocks[1:]):
        block.set_modules_to_forward_prefetch([following])


def _shard_one(module: torch.nn.Module, mesh: DeviceMesh, policy: OffloadPolicy, replicated: set,
               reshard_after_forward: bool = True) -> None:
    sharded_dtypes = {p.dtype for p in module.parameters() if p not in replicated}
    fully_shard(module, mesh=mesh, offload_policy=policy, ignored_params=replicated,
                reshard_after_forward=reshard_after_forward)
    if any(dtype.itemsize == 1 and dtype.is_floating_point for dtype in sharded_dtypes):
        module.set_custom_all_gather(ByteAllGather())
