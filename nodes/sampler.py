"""XFuser KSampler (Advanced): ComfyUI's KSamplerAdvanced, run by every worker on its share of the tokens."""
import comfy.model_management
import comfy.samplers
import comfy.utils

from ..workers.sampling import SampleRequest, gather_latent
from .loader import TandemModel


class XFuserKSamplerAdvanced:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("TANDEM_MODEL",),
            "add_noise": (["enable", "disable"],),
            "noise_seed": ("INT", {"default": 0, "min": 0, "max": 0xffffffffffffffff, "control_after_generate": True}),
            "steps": ("INT", {"default": 20, "min": 1, "max": 10000}),
            "cfg": ("FLOAT", {"default": 8.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01}),
            "sampler_name": (comfy.samplers.KSampler.SAMPLERS,),
            "scheduler": (comfy.samplers.KSampler.SCHEDULERS,),
            "positive": ("CONDITIONING",),
            "negative": ("CONDITIONING",),
            "latent_image": ("LATENT",),
            "start_at_step": ("INT", {"default": 0, "min": 0, "max": 10000}),
            "end_at_step": ("INT", {"default": 10000, "min": 0, "max": 10000}),
            "return_with_leftover_noise": (["disable", "enable"],),
        }}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "Tandem"
    DESCRIPTION = "KSamplerAdvanced on the Tandem workers: same inputs, same result, several GPUs."

    def sample(self, model: TandemModel, add_noise, noise_seed, steps, cfg, sampler_name, scheduler, positive,
               negative, latent_image, start_at_step, end_at_step, return_with_leftover_noise):
        request = SampleRequest(
            add_noise=add_noise == "enable", noise_seed=noise_seed, steps=steps, cfg=cfg,
            sampler_name=sampler_name, scheduler=scheduler, positive=positive, negative=negative,
            latent=latent_image, start_at_step=start_at_step, end_at_step=end_at_step,
            return_with_leftover_noise=return_with_leftover_noise == "enable", loras=model.loras)
        group = model.group
        bar = comfy.utils.ProgressBar(steps)

        def poll():
            if comfy.model_management.processing_interrupted():
                group.interrupt()
            step, total = group.progress()
            if total:
                bar.update_absolute(step, total)

        results = group.sample(model.key, request, on_poll=poll)
        out = latent_image.copy()
        out["samples"] = gather_latent(results)
        return (out,)
