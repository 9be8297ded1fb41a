"""CFG-parallel: the positive and the negative prompt run on different GPUs, then swap their predictions.

Ranks are laid out [dp][cfg][sequence]: branch b of a job is the b-th block of ``sequence_degree`` consecutive
ranks, and rank r's partner in the other branch is r ± sequence_degree. The split is a ``WrappersMP.CALC_COND_BATCH`` wrapper,
the innermost one, so samplers, CFG math, post-CFG patches and other wrappers (caches) stay ComfyUI's and see both
predictions as on one GPU.
"""
from typing import Callable

import torch
import torch.distributed as dist

from .degrees import GroupConfig


def branch_of(config: GroupConfig, rank: int) -> int:
    """0 for the ranks that run the positive prompt, 1 for the negative."""
    return rank // config.sequence_degree % config.cfg_degree


def cfg_group(config: GroupConfig, rank: int) -> dist.ProcessGroup | None:
    """The pair of ranks (one per branch) that exchange predictions; every rank creates every pair, in order."""
    if config.cfg_degree == 1:
        return None
    seq, mine = config.sequence_degree, None
    for start in range(0, config.world_size, seq * 2):
        for offset in range(seq):
            pair = [start + offset, start + seq + offset]
            group = dist.new_group(pair) if config.world_size > 2 else dist.group.WORLD
            if rank in pair:
                mine = group
    return mine


def split_branches(group: dist.ProcessGroup, branch: int) -> Callable[..., list[torch.Tensor]]:
    """A CALC_COND_BATCH wrapper: for a [positive, negative] pair, compute my branch's prediction, all-gather both.
    Any other call (CFG 1, where ComfyUI skips the negative; three conds, as PerpNeg and DualCFG guiders pass; one
    cond, as post-CFG patches pass) runs whole on every rank."""
    def calc_cond_batch(executor, model, conds, x, timestep, model_options) -> list[torch.Tensor]:
        if len(conds) != 2 or conds[1] is None:
            return executor(model, conds, x, timestep, model_options)
        mine = executor(model, [conds[branch]], x, timestep, model_options)[0].contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=group)
        return both
    return calc_cond_batch
