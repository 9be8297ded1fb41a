"""Chroma, Chroma Radiance, Flux 2, HunyuanImage 2.1 and HunyuanVideo 1.5 under Ulysses 2, Ring 2 and Ulysses 2 + FSDP
equal ComfyUI's KSamplerAdvanced in one process (fp32), at a square latent and at a non-square one whose token count
is odd and which carries the family's extra inputs (Flux 2 reference latents, ByT5 glyph tokens, HunyuanVideo 1.5
I2V's image channels and vision tokens), on the Tandem MODEL of Tandem's Ray workers.

Tests are ordered by group settings (Ulysses 2, then Ring 2, then Ulysses 2 + FSDP), so each group starts once, and
each single-process reference is computed once. Chroma, Chroma Radiance and Flux 2 files are not detected at the tiny
width (fixed head counts, approximator and NeRF sizes): the workers get their config explicitly, as in
test_families; ``test_tiny_layouts_are_the_real_ones`` checks their keys are detected as their family at real width.
"""
import math

import pytest
import torch

from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import FAMILIES, build_model, detection_state_dict, load_checkpoint
from tandem.tests.test_wan_usp import SampleRequest, ksampler, relative, single_process, tandem_sample
from tandem.workers import group as groups

import comfy.clip_vision  # noqa: E402  (importable once checkpoints ran import_comfyui)
import comfy.model_detection  # noqa: E402

STEPS = 2
MODES = {
    "ulysses2": GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60),
    "ring2": GroupConfig(gpu_count=2, ulysses_degree=1, ring_degree=2, timeout_s=60),
    "ulysses2+fsdp": GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, timeout_s=60),
}
FAMILY_NAMES = ["chroma", "chroma_radiance", "flux2", "hunyuan_image21", "hunyuan_video15"]
# latent size (after batch and channels) of the square case and of the non-square, odd-token case with extras
SIZES = {
    "chroma": ((8, 8), (6, 10)),                  # 2×2 patches: 16, 15 tokens
    "chroma_radiance": ((64, 64), (48, 80)),      # pixels in 16×16 patches: 16, 15 tokens
    "flux2": ((4, 4), (3, 5)),                    # 1×1 patches: 16, 15 (+ 16 + 6 reference) tokens
    "hunyuan_image21": ((4, 4), (3, 5)),          # 1×1 patches: 16, 15 tokens (+ ByT5 text)
    "hunyuan_video15": ((1, 4, 4), (3, 3, 5)),    # 1×1×1 patches: 16, 45 tokens (+ I2V, vision and ByT5 text)
}
FLUX2_REFERENCES = ((4, 4), (2, 3))               # two reference latents, placed by "index" (10, 20 on the time axis)
CASES = ["square", "odd-extras"]


def blocks(family: str) -> int:
    config = FAMILIES[family].unet_config
    return config["depth"] + config["depth_single_blocks"]


def load_options(family: str) -> dict | None:
    """What the workers' detection cannot infer at the tiny width: the fixture's own config (dtypes are detected)."""
    spec = FAMILIES[family]
    if spec.detected:
        return None
    return {k: v for k, v in spec.unet_config.items() if k != "image_model" and not isinstance(v, torch.dtype)}


def request(family: str, case: str) -> tuple[SampleRequest, int]:
    """KSamplerAdvanced's inputs (distinct positive and negative text, cfg 5) and the image tokens they make."""
    spec = FAMILIES[family]
    size = SIZES[family][case == "odd-extras"]
    g = torch.Generator().manual_seed(7)
    channels = spec.latent_shape[1]
    extra = {"guidance": 3.5} if "guidance" in spec.extra_cond else {}
    extra["pooled_output"] = None                       # T5 / LLM text encoders give none
    patch = 16 if family == "chroma_radiance" else 2 if family == "chroma" else 1
    tokens = math.prod(size[:-2]) * (size[-2] // patch) * (size[-1] // patch)
    if case == "odd-extras" and family == "flux2":
        extra["reference_latents"] = [torch.randn(1, channels, *hw, generator=g) for hw in FLUX2_REFERENCES]
        tokens += sum(h * w for h, w in FLUX2_REFERENCES)
    if case == "odd-extras" and family in ("hunyuan_image21", "hunyuan_video15"):
        extra["conditioning_byt5small"] = torch.randn(1, 6, 1472, generator=g)
    if case == "odd-extras" and family == "hunyuan_video15":   # as HunyuanVideo15ImageToVideo conditions it
        mask = torch.ones(1, 1, *size)
        mask[:, :, 0] = 0.0
        vision = comfy.clip_vision.Output()
        vision.last_hidden_state = torch.randn(1, 9, 1152, generator=g)
        extra.update(concat_latent_image=torch.randn(1, 32, *size, generator=g), concat_mask=mask,
                     clip_vision_output=vision)
    positive = [[torch.randn(1, 12, spec.context_dim, generator=g), dict(extra)]]
    negative = [[torch.randn(1, 7, spec.context_dim, generator=g), dict(extra)]]
    latent = {"samples": torch.zeros(1, channels, *size)}
    req = SampleRequest(add_noise=True, noise_seed=42, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="simple",
                        positive=positive, negative=negative, latent=latent, start_at_step=0, end_at_step=10000,
                        return_with_leftover_noise=False)
    return req, tokens


_expected: dict[tuple[str, str], torch.Tensor] = {}


def expected(path: str, family: str, case: str) -> torch.Tensor:
    """ComfyUI alone, once per family and case (every mode compares with the same result)."""
    if (family, case) not in _expected:
        _expected[family, case] = single_process(path, family, request(family, case)[0])
    return _expected[family, case]


def check(latent, reference, stats, family: str, tokens: int, label: str) -> float:
    error = relative(latent, reference)
    print(f"{label}: {tokens} image tokens, relative error {error:.2e}, per-rank stats {stats}")
    assert latent.shape == reference.shape and error <= 1e-4
    assert [rank_stats["rank"] for rank_stats in stats] == [0, 1]
    for rank_stats in stats:                  # each rank's blocks ran on its share of the image tokens, never all
        assert rank_stats["block_tokens"] == [math.ceil(tokens / 2)]
        assert rank_stats["attention_calls"] >= STEPS * blocks(family)   # every joint attention exchanged
    return error


def test_tiny_layouts_are_the_real_ones(checkpoint):
    """The tiny files hold their family's real key layout: detected as it (HunyuanImage 2.1 / Video 1.5), or, for
    those only their real width detects, the same keys at that width are."""
    for family in FAMILY_NAMES:
        spec = FAMILIES[family]
        if spec.detected:
            config = load_checkpoint(checkpoint(family), family).model.model_config
        else:
            config = comfy.model_detection.model_config_from_unet(detection_state_dict(family), "")
        assert type(config) is spec.config_class, family


def test_chroma_radiance_refuses_controlnet_in_one_line():
    """Radiance gathers its tokens before the last residual would be added: a ControlNet is refused before any work."""
    from tandem.models import adapter_for
    from tandem.parallel.sequence import SequenceShard
    from tandem.tests.test_adapters import meta_model

    spec = FAMILIES["chroma_radiance"]
    model = meta_model(spec.config_class, spec.unet_config)
    adapter_for(model).install_sequence_parallel(model, SequenceShard(group=None), None)
    with pytest.raises(NotImplementedError, match="does not support ControlNet on Chroma Radiance: set Ulysses"):
        model(torch.zeros(1, 3, 32, 32, device="meta"), torch.zeros(1), torch.zeros(1, 4, 4096), None,
              control={"input": [], "output": []})


def test_chroma_controlnet_ulysses2_equals_single_process(checkpoint):
    """A Flux ControlNet on Chroma (ComfyUI's ControlNetApplyAdvanced): Chroma adds its residuals to every image
    token, so with 15 tokens rank 1 gets 7 residual rows padded to its 8 tokens."""
    from tandem.tests.test_controlnet import with_controlnet

    path = str(checkpoint("chroma"))
    req, tokens = request("chroma", "odd-extras")
    plain = expected(path, "chroma", "odd-extras")
    req = with_controlnet(req, "flux", SIZES["chroma"][1])
    reference = single_process(path, "chroma", req)
    latent, stats = tandem_sample(groups.start(MODES["ulysses2"]), path, req, unet_config=load_options("chroma"))
    check(latent, reference, stats, "chroma", tokens, "chroma + Flux ControlNet, Ulysses 2")
    assert relative(plain, reference) > 1e-3          # the ControlNet really changed the result


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("family", FAMILY_NAMES)
@pytest.mark.parametrize("mode", MODES)
def test_family_equals_single_process(_tandem_session, checkpoint, mode, family, case):
    path = str(checkpoint(family))
    reference = expected(path, family, case)
    req, tokens = request(family, case)
    group = groups.start(MODES[mode])
    if MODES[mode].fsdp and case == CASES[0]:    # before its first forward, after which FSDP keeps the root whole
        infos = group.call("load", path, "default", load_options(family))
        total = sum(p.numel() for p in build_model(family).model.diffusion_model.parameters())
        assert all(0.45 * total <= info["local_params"] <= 0.55 * total for info in infos)   # FSDP really sharded
    latent, stats = tandem_sample(group, path, req, unet_config=load_options(family))
    check(latent, reference, stats, family, tokens, f"{family} {case}, {mode}")


@pytest.mark.parametrize("family", FAMILY_NAMES)
def test_a_wrong_rope_slice_is_caught(checkpoint, family):
    """The equalities above hold only with each rank's own RoPE ids: ComfyUI alone with the image ids rotated by half
    the tokens (what a rank given its neighbour's slice would use) moves the result 10× beyond the tolerance."""
    path = str(checkpoint(family))
    reference = expected(path, family, "odd-extras")
    patcher = load_checkpoint(path, family)
    model = patcher.model.diffusion_model
    seen = {}
    embed = model.img_in_patch if family == "chroma_radiance" else model.img_in

    def count(module, args, out):
        seen["tokens"] = out.shape[2] * out.shape[3] if out.ndim == 4 else out.shape[1]

    def rotate(module, args):
        ids, n = args[0], seen["tokens"]
        image = slice(0, n) if family.startswith("hunyuan") else slice(ids.shape[1] - n, None)    # [img; txt]
        ids = ids.clone()
        ids[:, image] = ids[:, image].roll(n // 2, dims=1)
        return (ids,)

    embed.register_forward_hook(count)
    model.pe_embedder.register_forward_pre_hook(rotate)
    wrong = ksampler(patcher, request(family, "odd-extras")[0])
    print(f"{family}: a wrong RoPE slice moves the result by {relative(wrong, reference):.2e}")
    assert relative(wrong, reference) > 1e-3
