"""ComfyUI node classes only: validate inputs, call into workers/, return graph types."""
from .group import TandemInit, TandemShutdown
from .loader import TandemModelLoader
from .lora import TandemLoraLoader
from .sampler import XFuserKSamplerAdvanced
from .vae import TandemVAEDecode, TandemVAEEncode

NODE_CLASS_MAPPINGS = {
    "TandemInit": TandemInit,
    "TandemShutdown": TandemShutdown,
    "TandemModelLoader": TandemModelLoader,
    "TandemLoraLoader": TandemLoraLoader,
    "XFuserKSamplerAdvanced": XFuserKSamplerAdvanced,
    "TandemVAEDecode": TandemVAEDecode,
    "TandemVAEEncode": TandemVAEEncode,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "TandemInit": "Tandem Init",
    "TandemShutdown": "Tandem Shutdown",
    "TandemModelLoader": "Tandem Model Loader",
    "TandemLoraLoader": "Tandem LoRA Loader",
    "XFuserKSamplerAdvanced": "Tandem XFuser KSampler (Advanced)",   # node search matches names, not categories
    "TandemVAEDecode": "Tandem VAE Decode",
    "TandemVAEEncode": "Tandem VAE Encode",
}
