"""CFG-parallel: the positive and the negative prompt run on different GPUs, then swap their predictions.

Branch b of a job is the b-th block of ``sequence_degree`` consecutive ranks of a replica, and a rank's partner in the
other branch is ``sequence_degree`` ranks away (``layout``). The split is a ``WrappersMP.CALC_COND_BATCH`` wrapper,
the innermost one, so samplers, CFG math, post-CFG patches and other wrappers (caches) stay ComfyUI's and see both
predictions as on one GPU.
"""
from typing import Callable

import torch
import torch.distributed as dist



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
