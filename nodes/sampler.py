"""XFuser KSampler (Advanced): ComfyUI's KSamplerAdvanced, kept under its old name for workflows that use it.

Any sampler node samples a Tandem MODEL on the workers (see ``workers/standin.py``); this one adds nothing."""
import nodes


class XFuserKSamplerAdvanced(nodes.KSamplerAdvanced):
    CATEGORY = "Tandem"
    DESCRIPTION = "ComfyUI's KSamplerAdvanced (any sampler node runs a Tandem model on all its workers)."
