"""One Wan-14B self-attention call on 2 GPUs: Tandem's Ulysses path vs xfuser's, and 1-GPU SDPA.

    torchrun --nproc-per-node 2 bench/attention.py [--tokens 32760 --heads 40 --head-dim 128 --batch 2]

Prints one Markdown row per path: median ms over 20 calls after 5 warm-ups, and max relative error of the
gathered output against single-GPU SDPA on the full tensors.
"""
import argparse
import os
import statistics

import torch
import torch.distributed as dist
import torch.nn.functional as F



def timed(fn, warmup=5, reps=20, barrier=True) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        if barrier:
            dist.barrier()
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def timed_local(fn) -> float:
    return timed(fn, barrier=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=32760)
    p.add_argument("--heads", type=int, default=40)
    p.add_argument("--head-dim", type=int, default=128)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--profile", action="store_true", help="print rank 0's CUDA kernel times for Tandem's path")
    a = p.parse_args()
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    torch.cuda.set_device(rank)
    from _tandem import import_tandem
    import_tandem()
    from tandem.parallel.sequence import SequenceShard
    from tandem.parallel.ulysses import ulysses_attention

    dist.init_process_group("nccl", device_id=torch.device("cuda", rank))
    g = torch.Generator(device="cuda").manual_seed(0)
    b, s, h, d = a.batch, a.tokens, a.heads, a.head_dim
    q, k, v = (torch.randn(b, s, h * d, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    as_bhsd = lambda t: t.view(b, -1, h, d).transpose(1, 2)
    reference = F.scaled_dot_product_attention(as_bhsd(q), as_bhsd(k), as_bhsd(v)).transpose(1, 2).reshape(b, s, h * d)
    rows = []
    if rank == 0:
        rows.append(("1 GPU: SDPA", timed_local(lambda: F.scaled_dot_product_attention(
            as_bhsd(q), as_bhsd(k), as_bhsd(v))), 0.0))
    dist.barrier()

    shard = SequenceShard(dist.group.WORLD, total=s)
    lq, lk, lv = (shard.split(t) for t in (q, k, v))
    run = lambda: ulysses_attention(lq, lk, lv, h, shard, F.scaled_dot_product_attention)
    ms = timed(run)
    err = ((shard.gather(run()) - reference).float().norm() / reference.float().norm()).item()
    rows.append((f"{world} GPUs: Tandem Ulysses (all-to-all → SDPA → all-to-all)", ms, err))

    if a.profile:
        from torch.profiler import ProfilerActivity, profile
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                ulysses_attention(lq, lk, lv, h, shard, F.scaled_dot_product_attention)
            torch.cuda.synchronize()
        if rank == 0:
            print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))

    try:
        from xfuser.core.distributed import init_distributed_environment, initialize_model_parallel
        from xfuser.core.long_ctx_attention import xFuserLongContextAttention
        from yunchang.kernels import AttnType
        init_distributed_environment(rank=rank, world_size=world)
        initialize_model_parallel(sequence_parallel_degree=world, ulysses_degree=world, ring_degree=1)
        attn = xFuserLongContextAttention(attn_type=AttnType.TORCH)
        to4d = lambda t: t.view(b, -1, h, d)
        run_xfuser = lambda: attn(None, to4d(lq), to4d(lk), to4d(lv))
        ms = timed(run_xfuser)
        out = run_xfuser().reshape(b, -1, h * d)
        err = ((shard.gather(out) - reference).float().norm() / reference.float().norm()).item()
        rows.append((f"{world} GPUs: xfuser xFuserLongContextAttention (TORCH)", ms, err))
    except Exception as e:  # report, don't hide: the row says why xfuser could not run
        rows.append((f"{world} GPUs: xfuser failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}", float("nan"), float("nan")))

    if rank == 0:
        print(f"\n| attention path ({b}×{s} tokens, {h} heads × {d}, bf16) | ms | rel. error vs 1-GPU SDPA |")
        print("|---|---|---|")
        for name, ms, err in rows:
            print(f"| {name} | {ms:.1f} | {err:.1e} |")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
