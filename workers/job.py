"""One sampling job: what ComfyUI's guider had in hand on the host, continued by every worker on its resident model.

The host's ``CFGGuider.sample`` reached its OUTER_SAMPLE wrappers with everything decided: conds (copied, hooks
registered), cfg, its model_options (wrappers and callbacks merged in), sampler, sigmas, noise, latent, mask and seed,
and the stand-in patcher's patches, object patches and hooks. A worker applies that state to a clone of its resident
model and carries on where the host stopped: the same OUTER_SAMPLE wrappers (Tandem's own is a pass-through there),
then the guider's ``outer_sample``, so guiders, samplers, CFG math and every patch run as ComfyUI's own code, once per
rank, and nothing of ``sample``'s preparation runs twice.
"""
import math
from dataclasses import dataclass

import comfy.patcher_extension
import comfy.utils
import torch

from ..parallel.degrees import TandemError
from . import transport

# ModelPatcher attributes a MODEL node may change (``ModelPatcher.clone`` copies them); the rest is ComfyUI's
# per-process bookkeeping (backups, devices, the model itself).
PATCHER_STATE = ("patches", "patches_uuid", "object_patches", "weight_wrapper_patches", "model_options",
                 "attachments", "additional_models", "callbacks", "wrappers", "injections", "hook_patches",
                 "forced_hooks", "hook_mode")


class CannotTravel(Exception):
    """Code a worker cannot import: ``name`` from custom-node package ``package``."""

    def __init__(self, name: str, package: str):
        super().__init__(name, package)
        self.name, self.package = name, package


@dataclass
class Job:
    guider: object                 # the host's guider mid-``sample``; its model_patcher becomes the worker's clone
    patcher_state: dict
    noise: torch.Tensor
    latent_image: torch.Tensor
    sampler: object
    sigmas: torch.Tensor
    denoise_mask: torch.Tensor | None
    seed: int | None
    latent_shapes: list | None     # ``sample`` packs nested latents into one tensor; these unpack them
    previews: bool                 # the host has a callback: rank 0 streams each step's x0 and x back

    @classmethod
    def of(cls, guider, noise, latent_image, sampler, sigmas, denoise_mask, seed, latent_shapes,
           previews: bool) -> "Job":
        _check_finite(guider)
        _check_lora_shapes(guider.model_patcher)
        state = {name: getattr(guider.model_patcher, name) for name in PATCHER_STATE}
        return cls(guider, state, noise, latent_image, sampler, sigmas, denoise_mask, seed, latent_shapes, previews)

    def apply(self, patcher) -> None:
        """Give the worker's clone the host patcher's state (the guider already refers to that clone)."""
        for name, value in self.patcher_state.items():
            setattr(patcher, name, value)

    def take_rows(self, rows: list[int]) -> None:
        """Keep the batch rows of one data-parallel replica (the noise was drawn for the whole batch on the host)."""
        batch = self.latent_image.shape[0]
        self.noise, self.latent_image = self.noise[rows], self.latent_image[rows]
        if self.denoise_mask is not None and self.denoise_mask.shape[0] == batch:
            self.denoise_mask = self.denoise_mask[rows]

    def run(self, callback) -> torch.Tensor:
        """The rest of ``CFGGuider.sample`` from its OUTER_SAMPLE wrappers on."""
        guider = self.guider
        executor = comfy.patcher_extension.WrapperExecutor.new_class_executor(
            guider.outer_sample, guider, comfy.patcher_extension.get_all_wrappers(
                comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, guider.model_options, is_model_options=True))
        try:
            return executor.execute(self.noise, self.latent_image, self.sampler, self.sigmas, self.denoise_mask,
                                    callback, True, self.seed, latent_shapes=self.latent_shapes)
        finally:
            guider.model_patcher.restore_hook_patches()


def _check_finite(guider) -> None:
    """A NaN or infinite cfg or LoRA strength makes an all-NaN latent many minutes later: refuse it now."""
    for name in ("cfg", "cfg1", "cfg2", "neg_scale"):
        value = getattr(guider, name, None)
        if isinstance(value, float) and not math.isfinite(value):
            raise TandemError(f"the sampler's {name} is {value}: set it to a number")
    for key, patches in guider.model_patcher.patches.items():
        for strength_patch, _, strength_model, *_ in patches:
            if not all(math.isfinite(s) for s in (strength_patch, strength_model) if isinstance(s, (int, float))):
                raise TandemError(f"a LoRA strength on {key} is {strength_patch * strength_model}: set the LoRA "
                                  "node's strength to a number")


def _check_lora_shapes(patcher) -> None:
    """A LoRA whose key names match this model but whose shapes do not (made for another size of the same family)
    is skipped by ComfyUI with a log line per weight; say so in one line instead. Checked against the stand-in's
    weight shapes (``meta``), for plain LoRA factors (up × down)."""
    for key, patches in patcher.patches.items():
        shape = comfy.utils.get_attr(patcher.model, key).shape
        for _, adapter, *_ in patches:
            factors = getattr(adapter, "weights", None) if getattr(adapter, "name", None) == "lora" else None
            if factors is None or factors[3] is not None or factors[5] is not None:
                continue
            up, down = factors[0], factors[1]
            if up.shape[0] * down.flatten(1).shape[1] != math.prod(shape):
                raise TandemError(f"a LoRA's factors for {key} make a {up.shape[0]}×{down.flatten(1).shape[1]} "
                                  f"weight, but this model's is {'×'.join(map(str, shape))}: the LoRA was made for "
                                  "another size of this model; pick one made for this model")


def pack(job: Job, reference, files: bool) -> bytes | transport.Stored:
    """The job packed for every worker (``transport``); one line naming the node whose patch cannot travel."""
    try:
        return transport.pack(job, reference, files)
    except CannotTravel as e:
        raise TandemError(f"{e.name} (a patch from the custom node package {e.package!r}) cannot run in Tandem's "
                          f"workers, which load only ComfyUI and Tandem: take {_nodes_of(e.package)} out of the "
                          "Tandem model's chain") from None
    except Exception as e:
        text = " ".join(str(e).split())
        raise TandemError(f"a patch on this model cannot be sent to Tandem's workers ({type(e).__name__}: {text}): "
                          "take the node that added it out of the Tandem model's chain") from None


def _nodes_of(package: str) -> str:
    import nodes

    names = sorted(name for name, cls in nodes.NODE_CLASS_MAPPINGS.items()
                   if getattr(cls, "RELATIVE_PYTHON_MODULE", "").endswith(package)
                   or cls.__module__.split(".")[0] == package)
    return "its nodes (" + ", ".join(names[:3]) + ")" if names else "its nodes"


def gather_latent(results: list[tuple[torch.Tensor | None, dict]]) -> torch.Tensor:
    """The whole batch from every worker's result: each replica's leader holds its rows, in rank order."""
    return torch.cat([samples for samples, _ in results if samples is not None])
