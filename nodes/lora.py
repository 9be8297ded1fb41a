"""Tandem LoRA Loader: ComfyUI's LoraLoaderModelOnly, kept for workflows that use it, refusing a LoRA that matches
nothing (ComfyUI only logs that) so a LoRA for another model fails in one line."""
import nodes

from ..workers.group import TandemError


class TandemLoraLoader(nodes.LoraLoaderModelOnly):
    CATEGORY = "Tandem"
    DESCRIPTION = ("LoraLoaderModelOnly for any MODEL, Tandem's included (ComfyUI's own LoRA nodes work on Tandem "
                   "models too); a LoRA that matches none of the model's weights is an error here.")

    def load_lora_model_only(self, model, lora_name, strength_model):
        (patched,) = super().load_lora_model_only(model, lora_name, strength_model)
        count = lambda m: sum(len(patches) for patches in m.patches.values())   # noqa: E731
        if strength_model != 0 and count(patched) == count(model):
            name = type(model.model.model_config).__name__
            raise TandemError(f"LoRA {lora_name!r} matches none of this {name} model's weights: it was trained for "
                              "another model; pick a LoRA made for this one")
        return (patched,)
