"""Drop-in: a workflow with Load Diffusion Model swapped for Tandem Model Loader runs on the workers, through ComfyUI's
own sampler and model-patch nodes, with the result of the same workflow in one process (real server, /prompt, two CPU
workers on gloo, fp32).

Each row of the table is one prompt holding both twins: Tandem Init → Tandem Model Loader → the row's patch nodes →
the row's sampler, and UNETLoader → the same patch nodes → the same sampler. Patch rows also sample the one-process
model without the patch, to prove the patch changes the result (so a replay that dropped it would fail).
"""
import asyncio
import itertools
import json
import uuid

import aiohttp
import pytest
import torch

from tandem.tests.server import ComfyServer
from tandem.tests.test_workflows import cached_nodes, init_node, install, saved_latent  # noqa: F401 (fixtures)

STEPS = 4
_seeds = itertools.count(5000)
LAYOUTS = {"ulysses2": {}, "cfg2": {"ulysses_degree": 1, "cfg_degree": 2}, "ulysses2+fsdp": {"fsdp": True}}


def make(info: dict, class_type: str, **inputs) -> dict:
    """An API-format node with ``inputs``, and /object_info's default for every other widget input."""
    for name, spec in info[class_type]["input"]["required"].items():
        options = spec[1] if len(spec) > 1 else {}
        if name not in inputs and "default" in options:
            inputs[name] = options["default"]
        elif name not in inputs and isinstance(spec[0], list):
            inputs[name] = spec[0][0]
    return {"class_type": class_type, "inputs": inputs}


# Each sampler: how to sample ``model`` into LATENT outputs (node suffix -> output slot), ComfyUI's nodes only.
def ksampler(info, p, model, seed):
    return {p + "s": make(info, "KSampler", model=model, seed=seed, steps=STEPS, cfg=5.0, sampler_name="euler",
                          scheduler="simple", positive=["pos", 0], negative=["neg", 0], latent_image=["latent", 0])
            }, {"s": 0}


def ksampler_advanced(info, p, model, seed):
    return {p + "s": make(info, "KSamplerAdvanced", model=model, add_noise="enable", noise_seed=seed, steps=STEPS,
                          cfg=5.0, sampler_name="dpmpp_2m", scheduler="simple", positive=["pos", 0],
                          negative=["neg", 0], latent_image=["latent", 0], start_at_step=0, end_at_step=10000,
                          return_with_leftover_noise="disable")}, {"s": 0}


def custom_parts(info, p, model):
    return {p + "sigmas": make(info, "BasicScheduler", model=model, scheduler="simple", steps=STEPS, denoise=1.0),
            p + "sampler": make(info, "KSamplerSelect", sampler_name="euler")}


def sampler_custom(info, p, model, seed):
    nodes = custom_parts(info, p, model)
    nodes[p + "s"] = make(info, "SamplerCustom", model=model, add_noise=True, noise_seed=seed, cfg=5.0,
                          positive=["pos", 0], negative=["neg", 0], sampler=[p + "sampler", 0],
                          sigmas=[p + "sigmas", 0], latent_image=["latent", 0])
    return nodes, {"s": 0, "s_denoised": 1}       # its denoised output is the last step's x0 from the callback


def guided(guider: str, **inputs):
    def build(info, p, model, seed):
        nodes = custom_parts(info, p, model)
        nodes[p + "noise"] = make(info, "RandomNoise", noise_seed=seed)
        nodes[p + "guider"] = make(info, guider, model=model, **inputs)
        nodes[p + "s"] = make(info, "SamplerCustomAdvanced", noise=[p + "noise", 0], guider=[p + "guider", 0],
                              sampler=[p + "sampler", 0], sigmas=[p + "sigmas", 0], latent_image=["latent", 0])
        return nodes, {"s": 0, "s_denoised": 1}
    return build


SAMPLERS = {
    "KSampler": ksampler,
    "KSamplerAdvanced": ksampler_advanced,
    "SamplerCustom": sampler_custom,
    "CFGGuider": guided("CFGGuider", positive=["pos", 0], negative=["neg", 0], cfg=5.0),
    "BasicGuider": guided("BasicGuider", conditioning=["pos", 0]),
    "DualCFGGuider": guided("DualCFGGuider", cond1=["pos", 0], cond2=["pos2", 0], negative=["neg", 0], cfg_conds=5.0,
                            cfg_cond2_negative=3.0, style="regular"),
    "PerpNegGuider": guided("PerpNegGuider", positive=["pos", 0], negative=["neg", 0], empty_conditioning=["empty", 0],
                            cfg=5.0, neg_scale=1.0),
}

# Each patch row: the chain of model-patch nodes (class, inputs) applied to the model before a KSampler.
PATCHES = {
    "ModelSamplingSD3-5": [("ModelSamplingSD3", {"shift": 5.0})],
    "ModelSamplingSD3-12": [("ModelSamplingSD3", {"shift": 12.0})],   # 8 is Wan's own shift: no change to see
    "ModelSamplingFlux": [("ModelSamplingFlux", {"max_shift": 1.15, "base_shift": 0.5, "width": 32, "height": 32})],
    "ModelSamplingAuraFlow": [("ModelSamplingAuraFlow", {"shift": 3.0})],
    "two-LoRAs": [("LoraLoaderModelOnly", {"lora_name": "dropin_a.safetensors", "strength_model": 0.8}),
                  ("LoraLoaderModelOnly", {"lora_name": "dropin_b.safetensors", "strength_model": -0.5})],
    "CFGZeroStar": [("CFGZeroStar", {})],
    "SkipLayerGuidanceDiT": [("SkipLayerGuidanceDiT", {"double_layers": "1", "single_layers": "", "scale": 3.0,
                                                       "start_percent": 0.0, "end_percent": 1.0})],
    "RescaleCFG": [("RescaleCFG", {"multiplier": 0.7})],
    "APG": [("APG", {"eta": 0.5, "norm_threshold": 1.0, "momentum": -0.5})],
    "EasyCache": [("EasyCache", {"reuse_threshold": 0.5, "start_percent": 0.0, "end_percent": 1.0})],
}
SOME_PATCHES = ["ModelSamplingSD3-12", "two-LoRAs", "RescaleCFG"]


@pytest.fixture(scope="module")
def loras(comfy_server: ComfyServer) -> None:
    from tandem.tests.test_lora import make_lora

    make_lora("wan21_t2v", comfy_server.loras_dir / "dropin_a.safetensors", seed=11)
    make_lora("wan21_t2v", comfy_server.loras_dir / "dropin_b.safetensors", seed=12, rank=2, kohya=True)


def twin_prompt(server: ComfyServer, init: dict, unet: str, sampler: str, patches: list, seed: int,
                bare: bool) -> tuple[dict, list[str]]:
    """The row's prompt and the SaveLatent node ids, as (tandem, single[, bare]) pairs of output names."""
    info = server.object_info()
    prompt = {
        "init": init,
        "t_model": make(info, "TandemModelLoader", group=["init", 0], unet_name=unet, weight_dtype="default"),
        "u_model": make(info, "UNETLoader", unet_name=unet, weight_dtype="default"),
        "pos": make(info, "TandemTestConditioning", seed=1, tokens=12, width=4096),
        "neg": make(info, "TandemTestConditioning", seed=2, tokens=7, width=4096),
        "pos2": make(info, "TandemTestConditioning", seed=3, tokens=9, width=4096),
        "empty": make(info, "TandemTestConditioning", seed=4, tokens=1, width=4096),
        "latent": make(info, "EmptyHunyuanLatentVideo", width=32, height=32, length=9, batch_size=1),
    }
    sides = {"t_": "t_model", "u_": "u_model"} | ({"b_": "u_model"} if bare else {})
    saves = {}
    for p, model in sides.items():
        ref = [model, 0]
        for i, (class_type, inputs) in enumerate(patches if p != "b_" else []):
            prompt[f"{p}patch{i}"] = make(info, class_type, model=ref, **inputs)
            ref = [f"{p}patch{i}", 0]
        nodes, outputs = SAMPLERS[sampler](info, p, ref, seed)
        prompt |= nodes
        for name, slot in outputs.items():
            save = f"{p}save_{name}"
            prompt[save] = make(info, "SaveLatent", samples=[p + "s", slot], filename_prefix=f"dropin_{seed}_{p}{name}")
            saves.setdefault(name, {})[p] = save
    return prompt, saves


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


def check_row(server: ComfyServer, init_node: dict, install, layout: str, sampler: str, patch: str | None) -> None:
    init = {**init_node, "inputs": {**init_node["inputs"], "ulysses_degree": 2, "cfg_degree": 1, "fsdp": False,
                                    **LAYOUTS[layout]}}
    patches = PATCHES[patch] if patch else []
    seed = next(_seeds)
    prompt, saves = twin_prompt(server, init, install("wan21_t2v"), sampler, patches, seed, bare=bool(patch))
    entry = server.wait(server.post_prompt(prompt))
    assert "t_s" not in cached_nodes(entry)
    for name, ids in saves.items():
        tandem, single = (saved_latent(server, entry, ids[p]) for p in ("t_", "u_"))
        error = relative(tandem, single)
        report = f"{layout} {sampler} {patch or ''} {name}: relative error {error:.2e}"
        if "b_" in ids:
            effect = relative(single, saved_latent(server, entry, ids["b_"]))
            report += f"; the patch changes the one-process result by {effect:.2e}"
            assert effect > 1e-3, report
        print(report)
        assert tandem.shape == single.shape and single.std() > 0.05
        assert error < 1e-4, report


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sampler_nodes_ulysses2(comfy_server, init_node, install, sampler):
    check_row(comfy_server, init_node, install, "ulysses2", sampler, None)


@pytest.mark.parametrize("patch", PATCHES)
def test_patch_nodes_ulysses2(comfy_server, init_node, install, loras, patch):
    check_row(comfy_server, init_node, install, "ulysses2", "KSampler", patch)


@pytest.mark.parametrize("row", [*SAMPLERS, *SOME_PATCHES])
def test_cfg_parallel2(comfy_server, init_node, install, loras, row):
    check_row(comfy_server, init_node, install, "cfg2", "KSampler" if row in PATCHES else row,
              row if row in PATCHES else None)


@pytest.mark.parametrize("row", [*SAMPLERS, *SOME_PATCHES])
def test_ulysses2_fsdp(comfy_server, init_node, install, loras, row):
    check_row(comfy_server, init_node, install, "ulysses2+fsdp", "KSampler" if row in PATCHES else row,
              row if row in PATCHES else None)


async def _messages(server: ComfyServer, prompt: dict) -> list[tuple[str, object]]:
    """Every websocket message ComfyUI sends while it runs ``prompt``: ("preview", bytes) for binary frames."""
    client_id = uuid.uuid4().hex
    seen = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}") as ws:
            prompt_id = await asyncio.to_thread(server.post_prompt, prompt, client_id)
            async with asyncio.timeout(300):
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        seen.append(("preview", message.data))
                        continue
                    event = json.loads(message.data)
                    seen.append((event["type"], event["data"]))
                    data = event["data"]
                    if data.get("prompt_id") == prompt_id and (
                            event["type"] in ("execution_error", "execution_interrupted")
                            or (event["type"] == "executing" and data.get("node") is None)):
                        break
    return seen


def test_progress_and_previews_as_on_one_gpu(comfy_server, init_node, install):
    """With --preview-method latent2rgb a Tandem KSampler sends ComfyUI's own progress and preview messages, one per
    step, as the same KSampler does in one process."""
    steps = 6
    counts = {}
    for side in ("tandem", "single"):
        prompt, _ = twin_prompt(comfy_server, init_node, install("wan21_t2v"), "KSampler", [], next(_seeds), False)
        keep = "t_" if side == "tandem" else "u_"
        prompt = {k: v for k, v in prompt.items() if not k.startswith(("t_", "u_")) or k.startswith(keep)}
        if side == "single":
            prompt.pop("init")
        prompt[keep + "s"]["inputs"]["steps"] = steps
        messages = asyncio.run(_messages(comfy_server, prompt))
        progress = [d for kind, d in messages if kind == "progress" and d["node"] == keep + "s"]
        previews = [d for kind, d in messages if kind == "preview"]
        assert not [d for kind, d in messages if kind == "execution_error"], messages
        counts[side] = (len(progress), len(previews), [d["value"] for d in progress])
    print(f"progress messages, preview frames, progress values: {counts}")
    assert counts["tandem"] == counts["single"]
    assert counts["tandem"][0] == counts["tandem"][1] == steps


def test_patch_that_cannot_travel_fails_in_one_line(comfy_server, init_node, install):
    """A patch whose code lives in a custom-node package the workers cannot import: one line naming the package and
    its node, before any worker samples; the next prompt samples."""
    info = comfy_server.object_info()
    prompt, _ = twin_prompt(comfy_server, init_node, install("wan21_t2v"), "KSampler", [], next(_seeds), False)
    prompt = {k: v for k, v in prompt.items() if not k.startswith("u_")}
    prompt["t_patch"] = make(info, "TandemTestHostOnlyPatch", model=["t_model", 0])
    prompt["t_s"]["inputs"]["model"] = ["t_patch", 0]
    error = comfy_server.wait_error(comfy_server.post_prompt(prompt), timeout=120)
    message = error["exception_message"].strip()
    print(f"{error['node_type']}: {message}")
    assert "\n" not in message and error["node_type"] == "KSampler"
    assert "tandem_test_nodes.halve_guidance" in message and "TandemTestHostOnlyPatch" in message

    prompt["t_s"]["inputs"]["model"] = ["t_model", 0]
    prompt["t_s"]["inputs"]["seed"] = next(_seeds)
    comfy_server.wait(comfy_server.post_prompt(prompt))


def test_tandem_model_after_shutdown_fails_in_one_line(_tandem_session, checkpoint):
    """A MODEL whose workers Tandem Shutdown stopped says so; a new group samples again."""
    from tandem.nodes.loader import load
    from tandem.parallel.degrees import GroupConfig, TandemError
    from tandem.tests.test_wan_usp import ksampler, request
    from tandem.workers import group as groups

    config = GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60)
    path = str(checkpoint("wan21_t2v"))
    model = load(groups.start(config), path)
    groups.shutdown()
    with pytest.raises(TandemError, match=r"^this Tandem group was stopped \(Tandem Shutdown, or a lost worker\): "
                                          r"run the prompt again") as error:
        ksampler(model, request("wan21_t2v", (3, 8, 8), "euler"))
    assert "\n" not in str(error.value)
    assert ksampler(load(groups.start(config), path), request("wan21_t2v", (3, 8, 8), "euler")).std() > 0.05
