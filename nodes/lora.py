"""Tandem LoRA Loader: ComfyUI's LoraLoaderModelOnly, kept for workflows that use it, refusing a LoRA that matches
nothing (ComfyUI only logs that) so a LoRA for another model fails in one line.

ComfyUI's ``nodes`` module is imported when the node runs, not with Tandem: workers and benchmarks import Tandem
without it (it needs PyAV and more)."""
from ..workers.group import TandemError


class TandemLoraLoader:
    @classmethod
    def INPUT_TYPES(cls):
        import nodes

        return nodes.LoraLoaderModelOnly.INPUT_TYPES()

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_lora_model_only"
    CATEGORY = "Tandem"
    DESCRIPTION = ("LoraLoaderModelOnly for any MODEL, Tandem's included (ComfyUI's own LoRA nodes work on Tandem "
                   "models too); a LoRA that matches none of the model's weights is an error here.")

    def __init__(self):
        import nodes

        self.loader = nodes.LoraLoaderModelOnly()     # it keeps the last LoRA file read, as on one GPU

    def load_lora_model_only(self, model, lora_name, strength_model):
        (patched,) = self.loader.load_lora_model_only(model, lora_name, strength_model)
        count = lambda m: sum(len(patches) for patches in m.patches.values())   # noqa: E731
        if strength_model != 0 and count(patched) == count(model):
            name = type(model.model.model_config).__name__
            raise TandemError(f"LoRA {lora_name!r} matches none of this {name} model's weights: it was trained for "
                              "another model; pick a LoRA made for this one")
        return (patched,)
