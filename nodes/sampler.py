"""XFuser KSampler (Advanced): ComfyUI's KSamplerAdvanced, kept under its old name for workflows that use it.

Any sampler node samples a Tandem MODEL on the workers (see ``workers/standin.py``); this one adds nothing. ComfyUI's
``nodes`` module is imported when the node is used, not with Tandem (see ``nodes/lora.py``)."""


class XFuserKSamplerAdvanced:
    @classmethod
    def INPUT_TYPES(cls):
        import nodes

        return nodes.KSamplerAdvanced.INPUT_TYPES()

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "sample"
    CATEGORY = "Tandem"
    DESCRIPTION = "ComfyUI's KSamplerAdvanced (any sampler node runs a Tandem model on all its workers)."

    def sample(self, *args, **kwargs):
        import nodes

        return nodes.KSamplerAdvanced().sample(*args, **kwargs)
