"""FSDP2 sharding of a DiT: ``fully_shard`` per transformer block, then the root, in the checkpoint's own dtypes.

FSDP2 gathers one flat buffer per block, so a block's parameters must share a dtype. Mixed-dtype ("scaled fp8")
blocks keep their majority dtype sharded and the others (scales, biases) replicated via ``ignored_params``.
"""
from collections import Counter

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard


def _odd_dtype_params(module: torch.nn.Module, skip: set[int]) -> set[torch.nn.Parameter]:
    """Parameters of ``module`` (outside already-sharded submodules) whose dtype is not the majority's."""
    params = [p for p in module.parameters() if id(p) not in skip]
    if not params:
        return set()
    majority = Counter(p.dtype for p in params).most_common(1)[0][0]
    return {p for p in params if p.dtype != majority}


def transformer_blocks(root: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of any DiT: the items of its top-level ModuleLists (Wan ``blocks``, Flux
    ``double_blocks`` + ``single_blocks``, ...), so FSDP needs no per-family list."""
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
        fully_shard(block, mesh=mesh, offload_policy=policy, ignored_params=_odd_dtype_params(block, done))
        done |= {id(p) for p in block.parameters()}
    fully_shard(root, mesh=mesh, offload_policy=policy, reshard_after_forward=False,
                ignored_params=_odd_dtype_params(root, done))
    for block, following in zip(blocks, blocks[1:]):
        block.set_modules_to_forward_prefetch([following])
