"""ControlNet under Ulysses 2 equals ComfyUI's KSamplerAdvanced in one process with the same ControlNet (fp32).

The ControlNets are ComfyUI's own classes at the tiny test width: Flux's XLabs-style ``ControlNetFlux`` (hint image
through its conv stem) and Qwen-Image's InstantX ``QwenImageControlNetModel`` (hint encoded by a VAE, here a tiny
Wan 2.1 VAE that ComfyUI's ``VAE`` detects from its keys). ComfyUI's ControlNet detection fixes the width at 3072
(24 heads of 128), as for the diffusion models (see checkpoints.py), so the ``comfy.controlnet.ControlNet`` wrapper
is built the way ``load_controlnet_flux_xlabs_mistoline`` / ``load_controlnet_qwen_instantx`` build it, and applied
with ComfyUI's ControlNetApplyAdvanced node: it reaches the workers inside the conditioning of the job that
KSamplerAdvanced on the Tandem MODEL sends (``workers.job``: large tensors by reference through shared memory, the
workers being on this host).
"""
import gc
import os
import threading

import comfy.controlnet
import comfy.latent_formats
import comfy.ldm.flux.controlnet
import comfy.ldm.qwen_image.controlnet
import comfy.ldm.wan.vae
import comfy.model_management
import comfy.ops
import comfy.sd
import pytest
import torch
from tandem.nodes.loader import load
from tandem.tests.checkpoints import FAMILIES, _randomize
from tandem.tests.test_families import HEADS, check, image_tokens, request
from tandem.tests.test_fsdp import anonymous_kb
from tandem.tests.test_transport import shared_files
from tandem.tests.test_wan_usp import ksampler, relative, single_process, tandem_sample
from tandem.workers import controlnet, transport

import nodes


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Seeded weights through which the hint image still shows: checkpoints' N(0, 0.02) for everything, then conv
    kernels at He scale and the VAE's RMS gains (``gamma``) at 1; at 0.02 the hint would fade out in the conv stem
    (or VAE encoder) and the ControlNet respond to the latent alone."""
    _randomize(module, seed)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 4:
                param.copy_(torch.randn(param.shape, generator=generator) * (2 / param[0].numel()) ** 0.5)
            elif name.endswith("gamma"):
                param.fill_(1.0)


def flux_controlnet(depth: int = 2) -> comfy.controlnet.ControlNet:
    """XLabs-style Flux ControlNet (conv stem on the hint image) with the tiny Flux's dims and ``depth`` double
    blocks (a deeper one still feeds the tiny Flux's 2 blocks)."""
    config = {k: v for k, v in FAMILIES["flux"].unet_config.items() if k != "image_model"} | {"depth": depth}
    model = comfy.ldm.flux.controlnet.ControlNetFlux(operations=comfy.ops.disable_weight_init, dtype=torch.float32,
                                                     **config)
    randomize(model, seed=11)
    return comfy.controlnet.ControlNet(model, load_device=comfy.model_management.get_torch_device(),
                                       manual_cast_dtype=None, extra_conds=["y", "guidance"])


def tiny_wan_vae() -> comfy.sd.VAE:
    """ComfyUI's Wan 2.1 VAE (Qwen-Image's) at width 8, detected by ``comfy.sd.VAE`` from its state dict."""
    model = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                     temperal_downsample=[False, True, True], dropout=0.0)
    randomize(model, seed=12)
    return comfy.sd.VAE(sd=model.state_dict())


def qwen_image_controlnet() -> comfy.controlnet.ControlNet:
    """InstantX Qwen-Image ControlNet (latent hint) with the tiny Qwen-Image's dims."""
    config = {k: v for k, v in FAMILIES["qwen_image"].unet_config.items() if k != "image_model"}
    model = comfy.ldm.qwen_image.controlnet.QwenImageControlNetModel(
        operations=comfy.ops.disable_weight_init, dtype=torch.float32, **config)
    randomize(model, seed=13)
    return comfy.controlnet.ControlNet(model, compression_ratio=1, latent_format=comfy.latent_formats.Wan21(),
                                       load_device=comfy.model_management.get_torch_device(),
                                       manual_cast_dtype=None, extra_conds=[])


CONTROLNETS = {"flux": (flux_controlnet, None), "qwen_image": (qwen_image_controlnet, tiny_wan_vae)}


def hint_image(size: tuple[int, ...], flip: bool = False):
    """An IMAGE ([B, H, W, 3] in 0..1) at the latent's pixel size; ``flip`` mirrors it left-right."""
    image = torch.rand(1, size[-2] * 8, size[-1] * 8, 3, generator=torch.Generator().manual_seed(5))
    return image.flip(2) if flip else image


def with_controlnet(req, family: str, size, flip: bool = False, end_percent: float = 0.7, control=None):
    """``req`` with its positive and negative conditioning passed through ComfyUI's ControlNetApplyAdvanced (with
    ``control``, or a new ControlNet of the family); the ControlNet stops at ``end_percent``, so the last steps also
    run the model without control."""
    build_controlnet, build_vae = CONTROLNETS[family]
    vae = build_vae() if build_vae else None
    req.positive, req.negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        req.positive, req.negative, control or build_controlnet(), hint_image(size, flip), 0.8, 0.0, end_percent,
        vae=vae)
    return req


CASES = {   # latent height × width, reference latent height × width
    "16-tokens": ((8, 8), None),
    "15-tokens": ((6, 10), None),
    # residuals cover the 15 image tokens, not the 6 reference ones: rank 1 holds 4 residual rows, then references
    "reference-21-tokens": ((6, 10), (6, 4)),
    # 4 image tokens before 15 reference ones: rank 1 holds no residual row at all
    "reference-19-tokens": ((4, 4), (6, 10)),
}


def sizes(family: str, case: str):
    frames = (1,) * (len(FAMILIES[family].latent_shape) - 4)    # Qwen-Image latents carry a frame axis
    return (frames + hw if hw else None for hw in CASES[case])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_controlnet_ulysses2_equals_single_process(tandem_group, checkpoint, family, case):
    size, reference = sizes(family, case)
    path = str(checkpoint(family))
    req = with_controlnet(request(family, size, reference), family, size)
    expected = single_process(path, family, req)
    latent, stats = tandem_sample(tandem_group, path, req, unet_config=HEADS[family])
    check(latent, expected, stats, family, image_tokens(*filter(None, (size, reference))),
          f"{family} + ControlNet, {case}")


@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_controlnet_placement_decides_the_result(tandem_group, checkpoint, family):
    """The equality above is no accident: the ControlNet changes the result far beyond the tolerance, and a hint
    mirrored left-right (the same residuals at other token positions) gives a different result under Ulysses 2."""
    size, _ = sizes(family, "15-tokens")
    path = str(checkpoint(family))
    plain = single_process(path, family, request(family, size))
    expected = single_process(path, family, with_controlnet(request(family, size), family, size))
    mirrored, _ = tandem_sample(tandem_group, path, with_controlnet(request(family, size), family, size, True),
                                unet_config=HEADS[family])
    print(f"{family}: ControlNet moves the result by {relative(plain, expected):.2e}, "
          f"a mirrored hint by {relative(mirrored, expected):.2e}")
    assert relative(plain, expected) > 1e-3 and relative(mirrored, expected) > 1e-3   # 10× the tolerance


@pytest.mark.parametrize("family", ["flux", "qwen_image"])
def test_controlnet_runs_on_the_workers_device(tandem_group, checkpoint, family):
    """The ControlNet (and the VAE that encodes its hint) arrive with the devices ComfyUI's process chose, here a GPU
    these CPU workers lack: each worker loads them on its own device instead."""
    size, _ = sizes(family, "15-tokens")
    path = str(checkpoint(family))
    expected = single_process(path, family, with_controlnet(request(family, size), family, size))
    req = with_controlnet(request(family, size), family, size)
    elsewhere = torch.device("cuda", 7)
    conds = [[options for _, options in conditioning] for conditioning in (req.positive, req.negative)]
    for control in controlnet.controlnets(conds):
        control.load_device = control.control_model_wrapped.load_device = elsewhere
        if control.vae is not None:
            control.vae.device = control.vae.patcher.load_device = elsewhere
    latent, _ = tandem_sample(tandem_group, path, req, unet_config=HEADS[family])
    assert relative(latent, expected) < 1e-4


def test_controlnet_weights_arrive_by_reference(tandem_group, checkpoint, monkeypatch):
    """Sampling with an 88 MB ControlNet adds, summed over the workers, well under its size of private host memory,
    both through shared files (every worker on ComfyUI's host) and through Ray's object store (as for workers on
    other hosts: once per host, read without a copy), while the same prompt with every tensor inside the pickle adds
    a copy per worker; Ray carries a request far smaller than the weights; the weights are written to shared files
    once for consecutive prompts and removed once it is freed.

    The tiny ControlNet's tensors are 0.25 to 2 MB (a real one's 18 MB and up), so the threshold goes down to 64 KiB
    to send all but its biases by reference."""
    monkeypatch.setattr(transport, "THRESHOLD", 64 << 10)
    size, _ = sizes("flux", "15-tokens")
    model = load(tandem_group, str(checkpoint("flux")), unet_config=HEADS["flux"])
    assert tandem_group.on_this_host
    control = flux_controlnet(depth=8)
    weight_bytes = sum(t.nbytes for t in control.control_model.state_dict().values())
    prompt = lambda: with_controlnet(request("flux", size), "flux", size, end_percent=1.0, control=control)
    pids = [w["pid"] for w in tandem_group.workers]

    def added_bytes() -> tuple[int, int]:
        """Peak private memory the workers add while KSamplerAdvanced runs a prompt on the Tandem MODEL, summed over
        the workers; polled from a thread while it runs."""
        before = [anonymous_kb(pid) for pid in pids]
        peak, polls, done = list(before), [], threading.Event()

        def poll():
            while not done.wait(0.05):
                peak[:] = [max(p, anonymous_kb(pid)) for p, pid in zip(peak, pids)]
                polls.append(1)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        try:
            ksampler(model, prompt())
        finally:
            done.set()
            thread.join()
        return sum(p - b for p, b in zip(peak, before)) * 1024, len(polls)

    ksampler(model, prompt())                   # the workers' first ControlNet job allocates for good
    gc.collect()
    files = shared_files()                      # the job's other files went with it: the weights' stay
    file_bytes = sum(os.path.getsize(f) for f in files)
    by_reference, polls = added_bytes()
    payload = len(transport.pack(prompt()))
    with monkeypatch.context() as elsewhere:    # as with workers on other hosts: the weights through Ray's store
        elsewhere.setattr(tandem_group, "on_this_host", False)
        through_store, store_polls = added_bytes()
        elsewhere.setattr(transport, "THRESHOLD", 1 << 62)     # every tensor inside the pickle: a copy per worker
        inline, inline_polls = added_bytes()
    gc.collect()
    again = shared_files()
    print(f"ControlNet {weight_bytes / 2**20:.1f} MB, in {len(files)} shared files {file_bytes / 2**20:.1f} MB; "
          f"Ray payload {payload / 2**10:.0f} KB; private memory added over {len(pids)} workers: by reference "
          f"{by_reference / 2**20:.1f} MB ({polls} polls), through Ray's store {through_store / 2**20:.1f} MB "
          f"({store_polls}), inside the pickle {inline / 2**20:.1f} MB ({inline_polls})")
    assert 0.99 * weight_bytes <= file_bytes <= weight_bytes and again == files     # written once
    assert payload < 0.01 * weight_bytes
    assert polls and store_polls and inline_polls and by_reference < 0.25 * weight_bytes
    assert through_store < 0.25 * weight_bytes
    assert inline > 0.75 * len(pids) * weight_bytes          # the measurement sees a copy where there is one
    del control, prompt
    gc.collect()
    assert not files & shared_files()
