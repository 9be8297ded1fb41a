"""A Tandem model on ComfyUI's host: an ordinary ComfyUI MODEL whose weights live only in the workers.

Tandem Model Loader returns a ``StandInPatcher`` around ComfyUI's own model object, built by ComfyUI's detection and
config from the file's header with the diffusion model on ``meta``: model_config, model_sampling and latent_format
are real, the weights cost nothing. Every MODEL node clones and patches it as it would any model (LoRA patches,
object patches such as ModelSampling*, model_options, wrappers, callbacks), and every sampler ends in
``CFGGuider.sample``, which runs the ``WrappersMP.OUTER_SAMPLE`` wrappers before it would load anything.

Tandem's wrapper (``RemoteSampling``), registered first and so outermost, does not sample on the host: it ships the
guider (conds, cfg, its own options), sampler, sigmas, noise, latent, mask, seed and the patcher's patches to the
workers (``workers.job``), which run ComfyUI's own ``sample`` on a clone of their resident model, and it calls the
host's callback (progress bar, latent previews) with what rank 0 streams back each step.
"""
import functools
import os
import sys
import types

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import folder_paths
import torch

from ..parallel import formats, weights
from . import job as jobs
from .group import Group, TandemError

WRAPPER_KEY = "tandem"


class StandInPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher whose model has no weights on this host: it costs nothing to ComfyUI's memory manager, and a
    node that tries to run it here (instead of sampling through ``comfy.samplers``) gets one line saying so."""

    def model_size(self) -> int:
        return 0

    def load(self, *args, **kwargs):
        raise TandemError("a node tried to run the Tandem model on ComfyUI's own device; Tandem models run only "
                          "through ComfyUI's samplers (KSampler, SamplerCustom(Advanced) and their guiders): use one")

    partially_load = load


def model_on_meta(path: str, weight_dtype: str, unet_config: dict | None = None) -> torch.nn.Module:
    """ComfyUI's model object for ``path``, detected from the file's header, with the diffusion model on ``meta``."""
    return weights.build_on_meta(os.path.basename(path), *formats.format_of(path).header(path),
                                 weights.model_options(weight_dtype), unet_config)[0]


def patcher(group: Group, model: torch.nn.Module, key: tuple) -> StandInPatcher:
    """The host's MODEL around ``model`` for the workers' model ``key``."""
    standin = StandInPatcher(model, load_device=comfy.model_management.get_torch_device(),
                             offload_device=comfy.model_management.unet_offload_device())
    standin.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, WRAPPER_KEY,
                                 RemoteSampling(group, key, model))
    return standin


class RemoteSampling:
    """The OUTER_SAMPLE wrapper of a stand-in: sample on the workers, report each step to the host's callback."""

    def __init__(self, group: Group, key: tuple, model: torch.nn.Module):
        self.group, self.key = group, key
        self.modules = {id(m): name for name, m in model.named_modules()}   # ComfyUI's BaseModel and its parts

    def __call__(self, executor, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                 disable_pbar=False, seed=None, latent_shapes=None):
        job = jobs.Job.of(executor.class_obj, noise, latent_image, sampler, sigmas, denoise_mask, seed,
                          latent_shapes, previews=callback is not None)
        data = jobs.pack(job, self._reference, files=self.group.on_this_host)
        results = self.group.sample(self.key, data, on_step=callback)
        latent = jobs.gather_latent(results)
        if not torch.isfinite(latent).all():
            raise TandemError("the sampled latent holds NaN or infinite values: the model file's weights are probably "
                              "corrupt (download it again), or fp16 overflowed (pick bf16 or default in the loader)")
        return latent

    def _reference(self, obj) -> str | None:
        """What the workers already hold: the stand-in model and its modules, every patcher cloned from it, this
        wrapper. Code from a custom node package, which workers cannot import, is refused here."""
        if isinstance(obj, StandInPatcher):
            return "patcher"
        if obj is self:
            return "outer-sample"
        if isinstance(obj, torch.nn.Module) and id(obj) in self.modules:
            return "module:" + self.modules[id(obj)]
        if isinstance(obj, (types.FunctionType, type)) and "<locals>" not in obj.__qualname__:
            package = _custom_node_package(obj.__module__)
            if package is not None:
                raise jobs.CannotTravel(f"{obj.__module__}.{obj.__qualname__}", package)
        return None


@functools.cache
def _custom_node_package(module_name: str) -> str | None:
    """The custom-node package (other than Tandem) that defines ``module_name``, or None. Tandem's workers import
    ComfyUI and Tandem only: a custom node's module may start servers or threads and is not meant to be imported
    in another process."""
    if module_name.split(".")[0] == "tandem":
        return None
    file = getattr(sys.modules.get(module_name), "__file__", None)
    if not file:
        return None
    for folder in folder_paths.get_folder_paths("custom_nodes"):
        relative = os.path.relpath(os.path.abspath(file), os.path.abspath(folder))
        if not relative.startswith(".."):
            return relative.split(os.sep)[0].removesuffix(".py")
    return None
