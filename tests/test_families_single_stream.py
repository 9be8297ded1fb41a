"""Lumina 2, Z-Image, SD3, LTXV, HiDream and Omnigen 2 under Ulysses 2, Ring 2 and Ulysses 2 + FSDP equal ComfyUI's
KSamplerAdvanced in one process (fp32), at a square latent (16 image tokens) and a non-square one with an odd token
count (15, or LTXV's 45: the split pads the second rank).

Each family's own inputs are exercised: Lumina 2's GQA and text attention masks (the caption refiner attends under
them, replicated on every rank); Z-Image's pad tokens, ScaleROPE's shifted and scaled RoPE positions and ComfyUI's
Z-Image sampling (ModelSamplingAuraFlow, shift 3); SD3.5 Medium's second image-only attention, pooled text and an
SD3 ControlNet; LTXV's text masks and image-to-video noise mask (one timestep per token); HiDream's T5 tokens, the
Llama-3 layers its blocks read one each (of another length than the T5 text) and pooled vector, with MoE
feed-forwards; Omnigen 2's reference image (ReferenceLatent's latent: its tokens run their own refiner, split, and
join the image's in the main blocks), caption refiner (replicated) and GQA. The tiny Lumina 2 / Z-Image / HiDream /
Omnigen 2 files load with their explicit config (ComfyUI detects the head layout only at the real widths), so the
tiny Z-Image loads as ComfyUI's Lumina2 config: the ModelSampling node gives both sides the same sampling. Tests run
mode by mode, so each group starts once.
"""
import math

import pytest
import torch

from tandem.parallel.degrees import GroupConfig
from tandem.tests.checkpoints import FAMILIES, load_checkpoint
from tandem.tests.test_families import assert_fsdp_sharded
from tandem.tests.test_wan_usp import SampleRequest, ksampler
from tandem.workers import group as groups

STEPS = 3
MODES = {   # in the suite the previous file leaves Ulysses 2 + FSDP running: it goes first
    "ulysses2+fsdp": GroupConfig(gpu_count=2, ulysses_degree=2, fsdp=True, timeout_s=60),
    "ring2": GroupConfig(gpu_count=2, ulysses_degree=1, ring_degree=2, timeout_s=60),
    "ulysses2": GroupConfig(gpu_count=2, ulysses_degree=2, timeout_s=60),
}
SIZES = {"16-tokens": (8, 8), "15-tokens": (6, 10), "15-tokens+controlnet": (6, 10),   # latent [frames ×] H × W
         "16-tokens-video": (1, 4, 4), "45-tokens-video+i2v": (3, 3, 5), "15-tokens+reference": (6, 10)}
REFERENCES = {"15-tokens+reference": (6, 4)}     # reference latent H × W (Omnigen 2): 6 more tokens
FAMILY_SIZES = {"lumina2": ("16-tokens", "15-tokens"), "z_image": ("16-tokens", "15-tokens"),
                "sd35": ("16-tokens", "15-tokens", "15-tokens+controlnet"),
                "ltxv": ("16-tokens-video", "45-tokens-video+i2v"),
                "hidream": ("16-tokens", "15-tokens"), "omnigen2": ("16-tokens", "15-tokens+reference")}
PATCH = {"ltxv": 1}       # latent pixels per token side (frames are never patched); the others 2
# sequence-parallel attentions per forward: NextDiT's 2 noise-refiner + 2 main blocks; the tiny SD3.5's 2 joint
# blocks, the first with a second, image-only attention; LTXV's self-attention in each of its 2 blocks; HiDream's 2
# double- and 2 single-stream blocks; Omnigen 2's 2 noise-refiner and 2 main blocks (and 2 reference-refiner blocks
# with a reference)
ATTENTIONS = {"lumina2": 4, "z_image": 4, "sd35": 3, "ltxv": 2, "hidream": 4, "omnigen2": 4}
TEXT_PADDING = {"omnigen2": 0}     # Omnigen 2 counts its text tokens from the mask: its encoder pads none
CASES = [(mode, family, size) for mode in MODES for family, sizes in FAMILY_SIZES.items() for size in sizes]


def request(family: str, size: str) -> SampleRequest:
    """Distinct positive and negative text (12 and 7 tokens); Lumina 2's carry masks with padding at the end, SD3's a
    pooled vector (and, for a "+controlnet" size, a ControlNet), HiDream's also 9 and 5 tokens of each Llama-3 layer;
    a "+reference" size gives both a reference latent."""
    spec = FAMILIES[family]
    g = torch.Generator().manual_seed(7)
    conds = []
    for tokens, padding, llama in ((12, 3, 9), (7, 2, 5)):
        extra = {"pooled_output": torch.randn(1, 768, generator=g)} if "pooled_output" in spec.extra_cond else {}
        if "attention_mask" in spec.extra_cond:     # as the text encoders give it: 1 for a token, 0 for padding
            extra["attention_mask"] = torch.ones(1, tokens, dtype=torch.long)
            extra["attention_mask"][:, tokens - TEXT_PADDING.get(family, padding):] = 0
        if "conditioning_llama3" in spec.extra_cond:     # [batch, Llama layers, tokens, width]
            layers = len(set(spec.unet_config["llama_layers"]))
            extra["conditioning_llama3"] = torch.randn(1, layers, llama, spec.context_dim, generator=g)
        if size in REFERENCES:
            extra["reference_latents"] = [torch.randn(1, spec.latent_shape[1], *REFERENCES[size],
                                                      generator=torch.Generator().manual_seed(11))]
        conds.append([[torch.randn(1, tokens, spec.context_dim, generator=g), extra]])
    shape = (1, spec.latent_shape[1], *SIZES[size])
    latent = {"samples": torch.zeros(shape)}
    if "i2v" in size:     # as LTXVImgToVideo: a given first frame, kept by the noise mask (one timestep per token)
        latent["samples"][:, :, 0] = torch.randn(shape[:2] + shape[3:], generator=g)
        latent["noise_mask"] = torch.ones(1, 1, *shape[2:])
        latent["noise_mask"][:, :, 0] = 0.0
    req = SampleRequest(add_noise=True, noise_seed=42, steps=STEPS, cfg=5.0, sampler_name="euler", scheduler="simple",
                        positive=conds[0], negative=conds[1], latent=latent, start_at_step=0, end_at_step=10000,
                        return_with_leftover_noise=False)
    return sd3_controlnet(req, SIZES[size]) if "controlnet" in size else req


def sd3_controlnet(req: SampleRequest, size: tuple[int, int]) -> SampleRequest:
    """``req`` through ComfyUI's ControlNetApplyAdvanced with a one-block SD3 ControlNet (ComfyUI's
    ``comfy.cldm.mmdit.ControlNet`` at the tiny width; its residual is added to every image token after the first
    joint block). The hint enters at latent size without a VAE (3 channels), which changes only how the hint is
    embedded; the ControlNet stops at 70%, so the last step runs without it."""
    import comfy.cldm.mmdit
    import comfy.controlnet
    import comfy.model_management
    import comfy.ops
    import nodes
    from tandem.tests.test_controlnet import hint_image, randomize

    model = comfy.cldm.mmdit.ControlNet(num_blocks=1, control_latent_channels=3, dtype=torch.float32,
                                        operations=comfy.ops.disable_weight_init, **FAMILIES["sd35"].unet_config)
    randomize(model, seed=11)
    control = comfy.controlnet.ControlNet(model, compression_ratio=1, load_device=comfy.model_management.get_torch_device(),
                                          manual_cast_dtype=None)
    req.positive, req.negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        req.positive, req.negative, control, hint_image(size), 0.8, 0.0, 0.7)
    return req


def patched(model, family: str):
    """Z-Image as ComfyUI's template samples it (ModelSamplingAuraFlow shift 3), with ScaleROPE moving the grid."""
    if family != "z_image":
        return model
    from comfy_extras.nodes_model_advanced import ModelSamplingAuraFlow
    from comfy_extras.nodes_rope import ScaleROPE

    model = ModelSamplingAuraFlow().patch_aura(model, 3.0)[0]
    return ScaleROPE.execute(model, 1.5, 2.0, 0.5, -1.0, 1.0, 0.0)[0]


def image_tokens(family: str, size: tuple[int, ...]) -> int:
    """Image tokens the blocks run on: patches, then the model's own padding (Z-Image: a multiple of 32)."""
    patch = PATCH.get(family, 2)
    tokens = math.prod(size[:-2]) * math.ceil(size[-2] / patch) * math.ceil(size[-1] / patch)
    multiple = FAMILIES[family].unet_config.get("pad_tokens_multiple") or 1
    return -(-tokens // multiple) * multiple


def block_tokens(family: str, size: str) -> list[int]:
    """Each rank's tokens in the blocks: half the image's; with an Omnigen 2 reference, also half the reference's (its
    refiner) and half of both (the main blocks)."""
    parts = [image_tokens(family, SIZES[size])]
    if size in REFERENCES:
        parts += [image_tokens(family, REFERENCES[size]), parts[0] + image_tokens(family, REFERENCES[size])]
    return sorted({math.ceil(n / 2) for n in parts})


_expected: dict[tuple[str, str], torch.Tensor] = {}


def expected(path: str, family: str, size: str) -> torch.Tensor:
    """Single-process ComfyUI's latent, computed once per family and size for every mode."""
    if (family, size) not in _expected:
        _expected[family, size] = single_process_patched(path, family, request(family, size))
    return _expected[family, size]


def single_process_patched(path: str, family: str, req: SampleRequest) -> torch.Tensor:
    return ksampler(patched(load_checkpoint(path, family), family), req)


@pytest.mark.parametrize("mode,family,size", CASES, ids=["-".join(case) for case in CASES])
def test_single_stream_families_equal_single_process(_tandem_session, checkpoint, mode, family, size):
    from tandem.nodes.loader import load

    path = str(checkpoint(family))
    unet_config = None if FAMILIES[family].detected else FAMILIES[family].unet_config
    group = groups.start(MODES[mode])
    infos = group.call("load", path, "default", unet_config)
    latent = ksampler(patched(load(group, path, unet_config=unet_config), family), request(family, size))
    stats, reference = group.last_stats, expected(path, family, size)
    error = ((latent - reference).norm() / reference.norm()).item()
    print(f"{family} {size} {mode}: relative error {error:.2e}, per-rank stats {stats}")
    assert latent.shape == reference.shape and error < 1e-4
    assert [rank_stats["rank"] for rank_stats in stats] == [0, 1]
    attentions = ATTENTIONS[family] + (2 if size in REFERENCES else 0)     # Omnigen 2's reference refiner
    for rank_stats in stats:                     # each rank's blocks held its share of the image tokens, never all
        assert rank_stats["block_tokens"] == block_tokens(family, size)
        assert rank_stats["attention_calls"] >= 2 * STEPS * attentions    # positive and negative apart
    if size.endswith(("+controlnet", "+reference")):    # the residuals / the reference matter far beyond the tolerance
        plain = expected(path, family, size.split("+")[0])
        assert ((reference - plain).norm() / plain.norm()).item() > 1e-3
    if MODES[mode].fsdp:
        assert_fsdp_sharded(family, infos)


def _roll_rope(family: str, model) -> None:
    """Hooks that give every block the image tokens' RoPE rows rolled by half the tokens: what a rank given its
    neighbour's rows would use."""
    def roll(rows: torch.Tensor, dim: int) -> torch.Tensor:
        return rows.roll(rows.shape[dim] // 2, dims=dim)

    if family == "ltxv":
        for block in model.transformer_blocks:
            block.register_forward_pre_hook(lambda m, args, kw: (args, {**kw, "pe": roll(kw["pe"], 2)}),
                                            with_kwargs=True)
        return
    image = {}
    for block in model.noise_refiner:     # (image, mask, image rows, t)
        block.register_forward_pre_hook(lambda m, args: image.update(tokens=args[0].shape[1]) or
                                        (args[0], args[1], roll(args[2], 1), *args[3:]))
    for block in model.layers:            # ([caption; image], mask, rows of both, adaln)
        block.register_forward_pre_hook(lambda m, args: (args[0], args[1], torch.cat(
            (args[2][:, :-image["tokens"]], roll(args[2][:, -image["tokens"]:], 1)), dim=1), *args[3:]))


@pytest.mark.parametrize("family,size", [("lumina2", "15-tokens"), ("ltxv", "45-tokens-video+i2v")])
def test_a_wrong_rope_slice_is_caught(checkpoint, family, size):
    """The equalities above hold only with each rank's own RoPE rows: ComfyUI alone with the image rows rolled by half
    the tokens moves the result well beyond the tolerance (Lumina 2 ~2e-2; LTXV, whose tiny blocks barely use
    positions, ~9e-4)."""
    path = str(checkpoint(family))
    patcher = load_checkpoint(path, family)
    _roll_rope(family, patcher.model.diffusion_model)
    wrong, reference = ksampler(patcher, request(family, size)), expected(path, family, size)
    error = ((wrong - reference).norm() / reference.norm()).item()
    print(f"{family}: a wrong RoPE slice moves the result by {error:.2e}")
    assert error > 5e-4
