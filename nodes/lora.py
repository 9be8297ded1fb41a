"""Tandem LoRA Loader: LoraLoaderModelOnly for a model that lives in the workers."""
from dataclasses import replace

import folder_paths

from ..workers.group import TandemError
from .loader import TandemModel, check_readable


class TandemLoraLoader:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("TANDEM_MODEL",),
            "lora_name": (folder_paths.get_filename_list("loras"), {"tooltip": "A LoRA from ComfyUI's loras folder."}),
            "strength_model": ("FLOAT", {"default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01, "tooltip":
                "How strongly to modify the diffusion model (0 leaves it unchanged; negative inverts the LoRA)."}),
        }}

    RETURN_TYPES = ("TANDEM_MODEL",)
    RETURN_NAMES = ("model",)
    FUNCTION = "load_lora"
    CATEGORY = "Tandem"
    DESCRIPTION = ("Applies a LoRA to a Tandem model, as LoraLoaderModelOnly does on one GPU; chain several. Every "
                   "worker patches its own weights (or FSDP shards) when sampling, with no copy of the model.")

    def load_lora(self, model: TandemModel, lora_name: str, strength_model: float):
        if strength_model == 0:
            return (model,)
        path = folder_paths.get_full_path("loras", lora_name)
        if path is None:
            raise TandemError(f"LoRA file {lora_name!r} is not in ComfyUI's loras folders: put it there or pick "
                              "another file")
        check_readable(path, lora_name, "LoRA file")
        return (replace(model, loras=model.loras + ((path, strength_model),)),)
