"""CFG-parallel: the positive and the negative prompt run on different GPUs, then swap their predictions.

Ranks are laid out [dp][cfg][sequence]: branch b of a job is the b-th block of ``sequence_degree`` consecutive
ranks, and rank r's partner in the other branch is r ± sequence_degree. The split goes through ComfyUI's
``sampler_calc_cond_batch_function`` hook, so samplers, CFG math and post-CFG patches stay ComfyUI's.
"""
from typing import Callable

import comfy.samplers
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


def split_branches(group: dist.ProcessGroup, branch: int) -> Callable[[dict], list[torch.Tensor]]:
    """A ``sampler_calc_cond_batch_function``: compute my branch's prediction, all-gather both."""
    def calc_cond_batch(args: dict) -> list[torch.Tensor]:
        conds, model, x, sigma, options = args["conds"], args["model"], args["input"], args["sigma"], \
            args["model_options"]
        if conds[1] is None:               # CFG 1: ComfyUI skips the negative; every rank runs the positive
            return comfy.samplers.calc_cond_batch(model, conds, x, sigma, options)
        mine = comfy.samplers.calc_cond_batch(model, [conds[branch]], x, sigma, options)[0].contiguous()
        both = [torch.empty_like(mine) for _ in range(2)]
        dist.all_gather(both, mine, group=group)
        return both
    return calc_cond_batch
