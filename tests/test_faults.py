"""Faults a hostile or unlucky user meets, each a one-line error in bounded time after which Tandem works again:
an unreachable Ray address, more CPU workers than the host holds, a hung worker, NaN settings, a stopped group, and
the package staging folder another local user could have prepared."""
import os
import signal
import stat
import threading
import time

import pytest
import ray
import torch

from tandem.parallel.degrees import GroupConfig, TandemConfigError, TandemError
from tandem.tests import fault_table
from tandem.tests.test_wan_usp import ksampler, request
from tandem.workers import group as groups

CONFIG = GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60)


def test_unreachable_ray_address_fails_fast_and_local_still_works(_tandem_session, checkpoint):
    """ray.init retries an address that does not answer for ever; Tandem Init answers in one line instead."""
    started = time.monotonic()
    with pytest.raises(TandemError, match=r"^cannot reach a Ray cluster at '127\.0\.0\.1:1' .*check the Ray address "
                                          r"in Tandem Init") as error:
        groups.start(GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60, ray_address="127.0.0.1:1"))
    waited = time.monotonic() - started
    assert "\n" not in str(error.value)
    fault_table.check("Ray address that does not answer", str(error.value), seen_s=waited)
    from tandem.nodes.loader import load

    latent = ksampler(load(groups.start(CONFIG), str(checkpoint("wan21_t2v"))), request("wan21_t2v", (3, 8, 8), "euler"))
    assert torch.isfinite(latent).all()


def test_more_cpu_workers_than_the_host_holds_is_refused_before_starting(_tandem_session):
    if torch.cuda.is_available():
        pytest.skip("CPU workers are the no-GPU case")
    before = groups.current()
    with pytest.raises(TandemConfigError, match=r"^GPU count 99 would start 99 CPU workers on this machine without "
                                                r"GPUs, which holds at most \d+ .*: set GPU count to \d+ or fewer$"
                       ) as error:
        groups.start(GroupConfig(gpu_count=99, ulysses_degree=1, timeout_s=60))
    assert groups.current() is before          # nothing was stopped or started
    fault_table.check("GPU count the host cannot hold", str(error.value))


def test_hung_worker_is_named_and_the_group_replaced(_tandem_session, checkpoint):
    """A stopped (SIGSTOP) worker: the job fails naming it after half the timeout (20 s here), not with a raw Ray
    error; the next run starts a new group that samples."""
    from tandem.nodes.loader import load

    config = GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=40)   # named unless steps 1-2 take 20 s
    group = groups.start(config)
    path = str(checkpoint("wan21_t2v"))
    model = load(group, path)
    stopped_at = []

    def stop_worker_1():
        while not stopped_at:
            if ray.get(group.actors[0].progress.remote())[0] >= 2:
                os.kill(group.workers[1]["pid"], signal.SIGSTOP)
                stopped_at.append(time.monotonic())
            time.sleep(0.02)

    long = request("wan21_t2v", (3, 8, 8), "euler")
    long.steps = 400
    threading.Thread(target=stop_worker_1, daemon=True).start()
    try:
        with pytest.raises(TandemError, match=r"^Tandem worker 1 stopped responding \(no answer for 20 s") as error:
            ksampler(model, long)
    finally:
        if stopped_at:
            try:
                os.kill(group.workers[1]["pid"], signal.SIGCONT)
            except ProcessLookupError:
                pass
    failed_at = time.monotonic()
    assert "\n" not in str(error.value)
    fresh = groups.start(config)
    assert fresh is not group
    assert torch.isfinite(ksampler(load(fresh, path), request("wan21_t2v", (3, 8, 8), "euler"))).all()
    fault_table.check("a worker stops answering", str(error.value), seen_s=failed_at - stopped_at[0],
                      recovery_s=time.monotonic() - failed_at)


def test_nan_cfg_and_nan_lora_strength_are_refused(tandem_group, checkpoint, tmp_path):
    import comfy.sd
    import comfy.utils

    from tandem.nodes.loader import load
    from tandem.tests.test_lora import make_lora

    model = load(tandem_group, str(checkpoint("wan21_t2v")))
    req = request("wan21_t2v", (3, 8, 8), "euler")
    req.cfg = float("nan")
    with pytest.raises(TandemError, match=r"^the sampler's cfg is nan: set it to a number$") as cfg_error:
        ksampler(model, req)
    lora = comfy.utils.load_torch_file(str(make_lora("wan21_t2v", tmp_path / "l.safetensors", 1)))
    patched = comfy.sd.load_lora_for_models(model, None, lora, float("nan"), 0)[0]
    with pytest.raises(TandemError, match=r"^a LoRA strength on .* is nan: set the LoRA node's strength to a number$"
                       ) as lora_error:
        ksampler(patched, request("wan21_t2v", (3, 8, 8), "euler"))
    for error in (cfg_error, lora_error):
        fault_table.check("NaN cfg or LoRA strength", str(error.value))
    assert torch.isfinite(ksampler(model, request("wan21_t2v", (3, 8, 8), "euler"))).all()


def test_a_stopped_group_makes_no_ray_call(_tandem_session):
    """After Tandem Shutdown nothing of Tandem's may call Ray: Ray would start a cluster of its own, without
    Tandem's package, and every later Tandem Init would fail."""
    group = groups.start(CONFIG)
    groups.shutdown()
    with pytest.raises(TandemError, match=r"^this Tandem group was stopped") as error:
        group.call("ping")
    fault_table.check("a Tandem MODEL whose workers were stopped", str(error.value))
    assert not ray.is_initialized()


def test_package_is_staged_in_a_private_new_folder(tmp_path):
    """Code another local user put where Tandem stages its package is never what the workers import."""
    first, second = groups.stage_package(), groups.stage_package()
    assert first != second
    for staged in (first, second):
        folder = os.path.dirname(staged)
        info = os.stat(folder)
        assert info.st_uid == os.getuid() and stat.S_IMODE(info.st_mode) == 0o700
        assert os.path.isfile(os.path.join(staged, "workers", "group.py"))


def test_corrupt_weights_are_reported_not_returned_as_nan(tandem_group, checkpoint, tmp_path):
    """A file whose header is fine but whose tensor bytes are not (NaN written over one weight) would sample an
    all-NaN latent without a word."""
    from safetensors.torch import load_file, save_file

    from tandem.nodes.loader import load

    tensors = load_file(str(checkpoint("wan21_t2v")))
    name = next(k for k in tensors if k.endswith("self_attn.q.weight"))
    tensors[name] = torch.full_like(tensors[name], float("nan"))
    corrupt = tmp_path / "corrupt.safetensors"
    save_file(tensors, str(corrupt))
    with pytest.raises(TandemError, match=r"^the sampled latent holds NaN or infinite values: the model file's "
                                          r"weights are probably corrupt") as error:
        ksampler(load(tandem_group, str(corrupt)), request("wan21_t2v", (3, 8, 8), "euler"))
    fault_table.check("weights whose bytes are corrupt", str(error.value))


def test_thirty_prompts_keep_memory_flat(tandem_group, checkpoint):
    """30 prompts on one Tandem model: the resident memory of ComfyUI's process (here, this test's) and of each
    worker grows by less than 60 MB between prompt 5 and prompt 30 (allocator noise, not a copy per prompt)."""
    import psutil

    from tandem.nodes.loader import load

    model = load(tandem_group, str(checkpoint("wan21_t2v")))
    processes = [psutil.Process()] + [psutil.Process(info["pid"]) for info in tandem_group.workers]
    rss = []
    for prompt in range(30):
        req = request("wan21_t2v", (3, 8, 8), "euler")
        req.noise_seed = prompt
        assert torch.isfinite(ksampler(model, req)).all()
        if prompt in (4, 29):
            rss.append([p.memory_info().rss / 2**20 for p in processes])
    growth = [after - before for before, after in zip(*rss)]
    print("RSS MB after prompt 5: " + ", ".join(f"{m:.0f}" for m in rss[0])
          + "; growth to prompt 30: " + ", ".join(f"{g:+.1f}" for g in growth))
    assert max(growth) < 60, growth


def test_private_ray_head_refuses_a_process_without_its_token(tandem_group, tmp_path):
    """Ray binds its ports on every interface; Tandem's private head must enforce Ray's token authentication (Ray
    2.59+, which requirements.txt asks for): a process without the token cannot connect, one with it can."""
    import subprocess
    import sys

    address = ray.get_runtime_context().gcs_address
    code = f"import ray; ray.init(address={address!r}); print('CONNECTED', len(ray.nodes()))"
    outsider = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")} | {"HOME": str(tmp_path)}
    results = {}
    for who, env in (("without the token", outsider), ("with the token", dict(os.environ))):
        try:
            run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=90)
            results[who] = "CONNECTED" in run.stdout, "InvalidAuthToken" in run.stdout + run.stderr
        except subprocess.TimeoutExpired:
            results[who] = False, False
    print(results)
    assert results["without the token"] == (False, True)
    assert results["with the token"][0]


def test_lora_with_matching_names_but_other_shapes_is_refused(tandem_group, checkpoint, tmp_path):
    """A LoRA for a wider Wan (384 vs 256) has this model's key names: ComfyUI would skip every weight with a log
    line and sample the model unpatched."""
    import comfy.sd
    import comfy.utils

    from tandem.nodes.loader import load
    from tandem.tests.test_lora import make_lora

    model = load(tandem_group, str(checkpoint("wan21_t2v")))
    wider = comfy.utils.load_torch_file(str(make_lora("wan21_t2v_3heads", tmp_path / "wider.safetensors", 2)))
    patched = comfy.sd.load_lora_for_models(model, None, wider, 1.0, 0)[0]
    assert patched.patches, "the key names match, so ComfyUI adds the patches"
    with pytest.raises(TandemError, match=r"^a LoRA's factors for diffusion_model\..* make a \d+×\d+ weight, but this "
                                          r"model's is \d+×\d+: the LoRA was made for another size of this model"
                       ) as error:
        ksampler(patched, request("wan21_t2v", (3, 8, 8), "euler"))
    fault_table.check("another size's shapes", str(error.value))
