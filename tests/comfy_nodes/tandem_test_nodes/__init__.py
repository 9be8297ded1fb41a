"""Test-only ComfyUI nodes, linked into the test server's custom_nodes next to Tandem.

A real Wan text encoder (umt5-xxl, ~10 GB) is far too big for CI, so workflows under test take their text
conditioning from a seeded random tensor of the encoder's width instead. ``TandemTestHostOnlyPatch`` is a model patch
from a third-party package, which Tandem's workers cannot import.
"""
import torch


class TandemTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff}),
            "tokens": ("INT", {"default": 8, "min": 1, "max": 4096}),
            "width": ("INT", {"default": 4096, "min": 1, "max": 16384}),
        }}

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "_for_testing"
    DESCRIPTION = "Deterministic stand-in for a text encoder: N(0, 1) context of shape (1, tokens, width) from seed."

    def encode(self, seed: int, tokens: int, width: int):
        generator = torch.Generator().manual_seed(seed)
        return ([[torch.randn(1, tokens, width, generator=generator), {}]],)


def halve_guidance(args: dict):
    """A post-CFG function defined in this custom-node package: importable only where ComfyUI loaded the package."""
    return args["cond_denoised"] + (args["denoised"] - args["cond_denoised"]) * 0.5


class TandemTestHostOnlyPatch:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "patch"
    CATEGORY = "_for_testing"
    DESCRIPTION = "A model patch whose code lives in a custom-node package (as most third-party patches do)."

    def patch(self, model):
        model = model.clone()
        model.set_model_sampler_post_cfg_function(halve_guidance)
        return (model,)


NODE_CLASS_MAPPINGS = {"TandemTestConditioning": TandemTestConditioning,
                       "TandemTestHostOnlyPatch": TandemTestHostOnlyPatch}
NODE_DISPLAY_NAME_MAPPINGS = {"TandemTestConditioning": "Tandem Test Conditioning",
                              "TandemTestHostOnlyPatch": "Tandem Test Host-Only Patch"}
