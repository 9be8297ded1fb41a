"""FSDP2 (alone, with Ulysses, with CPU offload) equals single-process ComfyUI, holds half the weights per worker,
and no mode keeps a private host copy of the weights (weights once per host)."""
import pytest
import torch

from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import build_model
from tandem.tests.test_wan_usp import (SampleRequest, ksampler, relative, request, single_process, start_load_sample,
                                       tandem_sample)
from tandem.workers import group as groups

SHAPE = (3, 6, 10)      # 45 tokens: odd, so Ulysses pads
MODES = {
    "fsdp": GroupConfig(gpu_count=2, ulysses_degree=1, fsdp=True, timeout_s=60),
    "ulysses2+fsdp": GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, timeout_s=60),
    "fsdp+offload": GroupConfig(gpu_count=2, ulysses_degree=1, fsdp=True, fsdp_cpu_offload=True, timeout_s=60),
}


@pytest.mark.parametrize("mode", MODES)
def test_fsdp_equals_single_process_and_shards_weights(_tandem_session, checkpoint, mode):
    path = str(checkpoint("wan21_t2v"))
    req = request("wan21_t2v", SHAPE, "dpmpp_2m")
    expected = single_process(path, "wan21_t2v", req)

    latent, _, infos = start_load_sample(MODES[mode], path, req)

    error = ((latent - expected).norm() / expected.norm()).item()
    print(f"{mode}: relative error {error:.2e}, local parameters {[i['local_params'] for i in infos]}")
    assert latent.shape == expected.shape and error < 1e-4
    total = sum(p.numel() for p in build_model("wan21_t2v").model.diffusion_model.parameters())
    for info in infos:                                  # each worker holds its half of every sharded tensor
        assert 0.45 * total <= info["local_params"] <= 0.55 * total
    assert sum(i["local_params"] for i in infos) == pytest.approx(total, rel=0.01)


def anonymous_kb(pid: int) -> int:
    """Private anonymous memory of a process: what a per-worker copy of the weights would add to."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("Anonymous:"))


@pytest.mark.parametrize("mode", ["ulysses2", "fsdp"])
def test_loading_keeps_no_private_copy(_tandem_session, checkpoint, mode):
    """Sum over workers of anonymous memory added by loading a ~420 MB file ≤ 0.3 × file size.

    On CPU an FSDP worker's own shard necessarily lives in host RAM (on a GPU it is VRAM), so that mode counts
    what loading adds beyond the rank's shard.
    """
    path = checkpoint("wan21_t2v_420mb")
    size_kb = path.stat().st_size // 1024
    config = GroupConfig(gpu_count=2, ulysses_degree=2 if mode == "ulysses2" else 1, fsdp=mode == "fsdp",
                         timeout_s=60)
    group = groups.start(config)
    pids = [w["pid"] for w in group.workers]
    before = [anonymous_kb(pid) for pid in pids]
    infos = group.call("load", str(path), "default")
    added = [anonymous_kb(pid) - b for pid, b in zip(pids, before)]
    shard_kb = [i["local_params"] * 4 // 1024 if mode == "fsdp" else 0 for i in infos]   # fp32 weights
    extra = sum(a - s for a, s in zip(added, shard_kb))
    print(f"{mode}: file {size_kb / 1024:.0f} MB, anonymous memory added per worker "
          f"{[round(a / 1024) for a in added]} MB, own shards {[round(s / 1024) for s in shard_kb]} MB, "
          f"beyond shards {extra / 1024:.0f} MB = {extra / size_kb:.2f} × file")
    assert extra <= 0.3 * size_kb


@pytest.mark.parametrize("ulysses", [1, 2])
def test_scaled_fp8_checkpoint_under_fsdp(_tandem_session, checkpoint, ulysses):
    """Mixed dtypes in every block (fp8 weights, fp32 scales, fp16 biases): shard the fp8, replicate the rest,
    never upcast the model, and sample what single-process ComfyUI samples."""
    path = str(checkpoint("wan21_t2v_scaled_fp8"))
    req = request("wan21_t2v", SHAPE, "euler")
    expected = single_process(path, "wan21_t2v_scaled_fp8", req)

    latent, _, infos = start_load_sample(GroupConfig(gpu_count=2, ulysses_degree=ulysses, fsdp=True, timeout_s=60),
                                         path, req)
    error = ((latent - expected).norm() / expected.norm()).item()
    print(f"scaled fp8, Ulysses {ulysses} + FSDP: relative error {error:.2e}, dtypes {infos[0]['dtypes']}")
    assert error < 1e-4
    assert "torch.float8_e4m3fn" in infos[0]["dtypes"]          # the weights stayed fp8


def test_fsdp_alone_runs_a_family_without_an_adapter(_tandem_session, checkpoint):
    """FSDP needs no per-family code: PixArt Sigma (PixArtMS), which sequence parallelism does not support, shards
    and matches."""
    path = str(checkpoint("pixart_sigma"))
    g = torch.Generator().manual_seed(5)
    cond = lambda n: [[torch.randn(1, n, 4096, generator=g), {}]]
    req = SampleRequest(add_noise=True, noise_seed=3, steps=3, cfg=5.0, sampler_name="euler", scheduler="simple",
                        positive=cond(8), negative=cond(5), latent={"samples": torch.zeros(1, 4, 40, 40)},
                        start_at_step=0, end_at_step=10000, return_with_leftover_noise=False)
    expected = single_process(path, "pixart_sigma", req)
    latent, _, infos = start_load_sample(GroupConfig(gpu_count=2, ulysses_degree=1, fsdp=True, timeout_s=60), path,
                                         req)
    error = ((latent - expected).norm() / expected.norm()).item()
    print(f"PixArt Sigma, FSDP over 2: relative error {error:.2e}, local parameters "
          f"{[i['local_params'] for i in infos]}")
    assert error < 1e-4
    total = sum(p.numel() for p in build_model("pixart_sigma").model.diffusion_model.parameters())
    assert all(0.45 * total <= info["local_params"] <= 0.55 * total for info in infos)


@pytest.mark.parametrize("fanout", ["striped", "rank0"])
@pytest.mark.parametrize("fsdp", [False, True])
def test_weights_read_once_per_host_and_broadcast(_tandem_session, checkpoint, fanout, fsdp):
    """The host's ranks split reading the file (striped) or rank 0 reads it, and the others receive each tensor by
    broadcast: the sample equals single-process ComfyUI only if every rank got every weight. Scaled fp8 mixes
    dtypes, so FSDP also broadcasts its replicated (non-majority) tensors."""
    path = str(checkpoint("wan21_t2v_scaled_fp8"))
    req = request("wan21_t2v", SHAPE, "euler")
    expected = single_process(path, "wan21_t2v_scaled_fp8", req)

    group = groups.start(GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=fsdp, timeout_s=60))
    infos = group.call("load", path, "default", None, fanout)
    latent, _ = tandem_sample(group, path, req, fanout=fanout)      # the model just loaded with that fan-out
    error = ((latent - expected).norm() / expected.norm()).item()
    read = [i["read_bytes"] for i in infos]
    print(f"{fanout}, FSDP {fsdp}: bytes read per rank {read}, relative error {error:.2e}")
    assert error < 1e-4
    if fanout == "rank0":
        assert read[1] == 0 < read[0]
    else:
        assert min(read) > 0.4 * max(read)


def test_fp8_weight_dtype_under_fsdp(_tandem_session, checkpoint):
    """Tandem Model Loader's fp8_e4m3fn_fast on an fp32 file under Ulysses 2 + FSDP: the workers hold fp8 shards
    (cast on the device while loading) and sample what ComfyUI samples with Load Diffusion Model set the same way
    (ComfyUI's own fp8 ops; on CPU they compute in the input's dtype, on GPUs with fp8 through ``_scaled_mm``)."""
    import comfy.sd

    from tandem.parallel.weights import model_options

    path = str(checkpoint("wan21_t2v"))
    req = request("wan21_t2v", SHAPE, "euler")
    expected = ksampler(comfy.sd.load_diffusion_model(path, model_options=model_options("fp8_e4m3fn_fast")), req)
    group = groups.start(GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, timeout_s=60))
    infos = group.call("load", path, "fp8_e4m3fn_fast")
    latent, _ = tandem_sample(group, path, req, weight_dtype="fp8_e4m3fn_fast")
    error = relative(latent, expected)
    print(f"fp8_e4m3fn_fast, Ulysses 2 + FSDP: relative error {error:.2e}, dtypes {infos[0]['dtypes']}, "
          f"{infos[0]['local_bytes']} bytes per worker")
    assert error < 1e-4 and "torch.float8_e4m3fn" in infos[0]["dtypes"]
