"""What the harness can measure: models (real layouts, as ComfyUI detects them) and modes (how a job is run).

Plain data only, so the harness's parent process imports neither torch's CUDA nor ComfyUI; the per-cell
subprocesses turn these entries into ComfyUI model configs and Tandem ``GroupConfig``s.
"""
import math
from dataclasses import dataclass, field
from typing import Callable


@dataclass(frozen=True)
class Model:
    """One DiT: the ComfyUI config class its file is detected as, that detection's unet_config, and its inputs."""

    config_class: str            # a class in comfy.supported_models
    unet_config: dict            # what comfy.model_detection reads from the real checkpoint
    size: str                    # default WxH (images) or WxHxF (videos)
    latent: Callable[[int, int, int], tuple[int, ...]]   # (width, height, frames) -> latent shape
    patch: tuple[int, ...]       # patch size over the latent's trailing dims: tokens = prod(ceil(dim / patch))
    context: tuple[int, int]     # text conditioning: tokens × width
    cfg: float                   # 1.0 for guidance-distilled models: one model call per step
    # more conditioning: name -> width (a [1, width] tensor), a shape after the batch, a (width, height, frames) ->
    # shape function (inputs that follow the size), or TEXT_MASK (the text encoder's attention mask: all ones)
    extra_cond: dict = field(default_factory=dict)

    def tokens(self, size: str) -> int:
        dims = self.latent(*parse_size(size))[-len(self.patch):]
        return math.prod(math.ceil(d / p) for d, p in zip(dims, self.patch))


def parse_size(size: str) -> tuple[int, int, int]:
    """'832x480x81' -> (832, 480, 81); an image size 'WxH' has one frame."""
    w, h, *f = map(int, size.lower().split("x"))
    return w, h, (f[0] if f else 1)


def _video(channels: int, down: int) -> Callable[[int, int, int], tuple[int, ...]]:
    """Latent of a video VAE with 4× temporal and ``down``× spatial compression (Wan, HunyuanVideo)."""
    return lambda w, h, f: (1, channels, (f - 1) // 4 + 1, h // down, w // down)


def _image(w: int, h: int, f: int) -> tuple[int, ...]:
    return 1, 16, h // 8, w // 8


TEXT_MASK = "text mask"   # an extra_cond value: attention mask over the context tokens, as text encoders give it


_WAN = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), freq_dim=256, text_dim=4096,
            window_size=(-1, -1), qk_norm=True, cross_attn_norm=True, eps=1e-6, in_dim=16, out_dim=16)
_WAN21 = dict(size="832x480x81", latent=_video(16, 8), patch=(1, 2, 2), context=(512, 4096), cfg=5.0)

_CHROMA = dict(image_model="chroma", axes_dim=[16, 56, 56], num_heads=24, mlp_ratio=4.0, theta=10000, out_channels=64,
               qkv_bias=True, in_channels=64, hidden_size=3072, context_in_dim=4096, patch_size=2, depth=19,
               depth_single_blocks=38, in_dim=64, out_dim=3072, hidden_dim=5120, n_layers=5)
_LUMINA2 = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=2304, cap_feat_dim=2304, n_layers=26,
                qk_norm=True, n_heads=24, n_kv_heads=8, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512],
                rope_theta=10000.0, ffn_dim_multiplier=4.0)
# SD 3.5 (MMDiT): detection reads the depth (width 64 · depth, as many heads), the pos_embed grid, RMS q/k norms and
# MMDiT-X's second image-only attention (Medium: blocks 0-12) from the keys; sizes from the diffusers configs of
# stabilityai/stable-diffusion-3.5-large (38 layers, pos_embed_max_size 192) and -medium (24, 384). Text: CLIP-L/G's
# 77 tokens (padded to 4096) and T5-XXL's 77 (ComfyUI's min_length), pooled CLIP-L + CLIP-G of 2048
_SD35 = dict(in_channels=16, patch_size=2, out_channels=16, input_size=None, adm_in_channels=2048,
             qk_norm="rms", pos_embed_scaling_factor=None)
_SD35_INPUTS = dict(size="1024x1024", latent=_image, patch=(2, 2), context=(154, 4096),
                    extra_cond={"pooled_output": 2048})
# LTXV 0.9.x 2B: 28 blocks of 32 heads × 64 (detection fixes 32 heads; width and cross-attention 2048 from attn2),
# T5-XXL text of 4096 (128 tokens: ComfyUI's min_length); video VAE of 128 channels, 32× spatial, 8× temporal
_LTXV = dict(image_model="ltxv", num_layers=28, attention_head_dim=64, cross_attention_dim=2048)
# Cosmos Predict 2 2B text-to-image (MiniTrainDIT): what detection gives at width 2048 (28 blocks, 16 heads);
# old T5-XXL text of 1024 (512 tokens: ComfyUI's min_length); Wan 2.1's VAE
_COSMOS2 = dict(image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16,
                out_channels=16, patch_spatial=2, patch_temporal=1, model_channels=2048, concat_padding_mask=True,
                crossattn_emb_channels=1024, pos_emb_cls="rope3d", pos_emb_learnable=True,
                pos_emb_interpolation="crop", min_fps=1, max_fps=30, use_adaln_lora=True, adaln_lora_dim=256,
                num_blocks=28, num_heads=16, extra_per_block_abs_pos_emb=False, rope_h_extrapolation_ratio=4.0,
                rope_w_extrapolation_ratio=4.0, rope_t_extrapolation_ratio=1.0, extra_h_extrapolation_ratio=1.0,
                extra_w_extrapolation_ratio=1.0, extra_t_extrapolation_ratio=1.0, rope_enable_fps_modulation=False)
# HiDream-I1 Full: detection's fixed config (16 double + 32 single blocks, 20 heads × 128, MoE 4 experts 2 active in
# the image stream, one Llama-3.1-8B layer per block). Text: T5-XXL 128 tokens as c_crossattn, Llama's 32 hidden
# layers × 128 tokens (conditioning_llama3), pooled CLIP-L + CLIP-G of 2048
_HIDREAM = dict(image_model="hidream", attention_head_dim=128, axes_dims_rope=[64, 32, 32],
                caption_channels=[4096, 4096], max_resolution=[128, 128], in_channels=16,
                llama_layers=[*range(32), *[31] * 16], num_attention_heads=20, num_routed_experts=4,
                num_activated_experts=2, num_layers=16, num_single_layers=32, out_channels=16, patch_size=2,
                text_emb_dim=2048)
# OmniGen2 (OmniGen2Transformer2DModel): detection's fixed config (width 2520, 21 heads / 7 KV heads, 32 blocks,
# 2 refiner blocks); Qwen2.5-VL-3B text of 2048 with its attention mask (ComfyUI passes num_tokens with it). Its
# Qwen text encoders, Z-Image's and HunyuanImage's too, give as many tokens as the prompt has: 128 here
_OMNIGEN2 = dict(image_model="omnigen2", axes_dim_rope=[40, 40, 40], axes_lens=[1024, 1664, 1664],
                 ffn_dim_multiplier=None, hidden_size=2520, in_channels=16, multiple_of=256, norm_eps=1e-05,
                 num_attention_heads=21, num_kv_heads=7, num_layers=32, num_refiner_layers=2, out_channels=None,
                 patch_size=2, text_feat_dim=2048, timestep_scale=1000.0)
# Z-Image (Turbo, guidance-distilled): NextDiT at width 3840, what detection gives there (30 heads, 30 KV heads,
# 30 layers counted, Qwen3-4B text of 2560, pad tokens to multiples of 32)
_ZIMAGE = dict(image_model="lumina2", patch_size=2, in_channels=16, dim=3840, cap_feat_dim=2560, n_layers=30,
               qk_norm=True, n_heads=30, n_kv_heads=30, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512],
               rope_theta=256.0, ffn_dim_multiplier=8.0 / 3.0, z_image_modulation=True, time_scale=1000.0,
               pad_tokens_multiple=32)
# HunyuanImage 2.1 (base, not distilled: no guidance or meanflow embedders): ComfyUI's HunyuanVideo class with
# tencent/HunyuanImage-2.1's hunyuanimage_v2_1_cfg (20 double + 40 single blocks, width 3584 = 28 heads × 128, 1×1
# patches on the 64-channel latent of its 32× VAE, Qwen2.5-VL-7B text of 3584, ByT5 glyph mapper); native 2048²
_HYIMAGE21 = dict(image_model="hunyuan_video", in_channels=64, out_channels=64, patch_size=[1, 1], vec_in_dim=None,
                  axes_dim=[64, 64], meanflow=False, context_in_dim=3584, hidden_size=3584, mlp_ratio=4.0,
                  num_heads=28, depth=20, depth_single_blocks=40, theta=256, qkv_bias=True, byt5=True,
                  guidance_embed=False, use_cond_type_embedding=False, vision_in_dim=None)


def _animate_latent(w: int, h: int, f: int) -> tuple[int, ...]:
    """WanAnimateToVideo's latent: the reference image's frame before the video's."""
    return 1, 16, (f - 1) // 4 + 2, h // 8, w // 8


# Wan 2.2 Animate 14B: Wan 2.1 14B I2V with pose latents (one per video latent frame) added to the patch embedding and
# a face block after every fifth block, fed a 512 × 512 face video (one frame per video frame)
_ANIMATE_COND = {"pose_video_latent": lambda w, h, f: (1, 16, (f - 1) // 4 + 1, h // 8, w // 8),
                 "face_video_pixels": lambda w, h, f: (1, 3, f, 512, 512)}

MODELS: dict[str, Model] = {
    "tiny-wan": Model("WAN21_T2V", {**_WAN, "dim": 256, "ffn_dim": 512, "num_heads": 2, "num_layers": 2},
                      **{**_WAN21, "size": "16x16x5"}),
    "wan2.1-1.3b": Model("WAN21_T2V", {**_WAN, "dim": 1536, "ffn_dim": 8960, "num_heads": 12, "num_layers": 30},
                         **_WAN21),
    "wan2.1-14b": Model("WAN21_T2V", {**_WAN, "dim": 5120, "ffn_dim": 13824, "num_heads": 40, "num_layers": 40},
                        **_WAN21),
    "wan2.2-5b": Model("WAN22_T2V", {**_WAN, "in_dim": 48, "out_dim": 48, "dim": 3072, "ffn_dim": 14336,
                                     "num_heads": 24, "num_layers": 30},
                       **{**_WAN21, "latent": _video(48, 16)}),
    "flux-12b": Model("Flux", dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768,
                                   context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24, depth=19,
                                   depth_single_blocks=38, axes_dim=[16, 56, 56], theta=10000, patch_size=2,
                                   qkv_bias=True, guidance_embed=True),
                      "1024x1024", _image, (2, 2), (512, 4096), 1.0, {"pooled_output": 768}),
    "qwen-image-20b": Model("QwenImage", dict(image_model="qwen_image", in_channels=64, num_layers=60),
                            "1328x1328", _image, (2, 2), (128, 3584), 2.5),
    "hunyuanvideo-13b": Model("HunyuanVideo", dict(
        image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
        axes_dim=[16, 56, 56], meanflow=False, context_in_dim=4096, hidden_size=3072, mlp_ratio=4.0, num_heads=24,
        depth=20, depth_single_blocks=40, theta=256, qkv_bias=True, byt5=False, guidance_embed=True,
        use_cond_type_embedding=False, vision_in_dim=None),
        "1280x720x33", _video(16, 8), (1, 2, 2), (128, 4096), 1.0, {"pooled_output": 768}),
    "chroma-8.9b": Model("Chroma", _CHROMA, "1024x1024", _image, (2, 2), (512, 4096), 4.0, {"pooled_output": 768}),
    "lumina2-2.6b": Model("Lumina2", _LUMINA2, "1024x1024", _image, (2, 2), (256, 2304), 4.0),
    "sd3.5-large-8b": Model("SD3", {**_SD35, "depth": 38, "num_patches": 192 ** 2, "pos_embed_max_size": 192,
                                    "x_block_self_attn_layers": [],
                                    "context_embedder_config": {"target": "torch.nn.Linear",
                                                                "params": {"in_features": 4096, "out_features": 2432}}},
                            cfg=3.5, **_SD35_INPUTS),
    "sd3.5-medium-2.5b": Model("SD3", {**_SD35, "depth": 24, "num_patches": 384 ** 2, "pos_embed_max_size": 384,
                                       "x_block_self_attn_layers": list(range(13)),
                                       "context_embedder_config": {"target": "torch.nn.Linear", "params": {
                                           "in_features": 4096, "out_features": 1536}}},
                               cfg=4.5, **_SD35_INPUTS),
    "ltxv-2b": Model("LTXV", _LTXV, "768x512x97", lambda w, h, f: (1, 128, (f - 1) // 8 + 1, h // 32, w // 32),
                     (1, 1, 1), (128, 4096), 3.0, {"attention_mask": TEXT_MASK}),
    "cosmos-predict2-2b": Model("CosmosT2IPredict2", _COSMOS2, "1024x1024", _video(16, 8), (1, 2, 2), (512, 1024),
                                4.0),
    "hidream-i1-17b": Model("HiDream", _HIDREAM, "1024x1024", _image, (2, 2), (128, 4096), 5.0,
                            {"pooled_output": 2048, "conditioning_llama3": (32, 128, 4096)}),
    "omnigen2-4b": Model("Omnigen2", _OMNIGEN2, "1024x1024", _image, (2, 2), (128, 2048), 5.0,
                         {"attention_mask": TEXT_MASK}),
    "z-image-6b": Model("ZImage", _ZIMAGE, "1024x1024", _image, (2, 2), (128, 2560), 1.0),
    "hunyuan-image-2.1-17b": Model("HunyuanImage21", _HYIMAGE21, "2048x2048",
                                   lambda w, h, f: (1, 64, h // 32, w // 32), (1, 1), (128, 3584), 3.5),
    "wan2.2-animate-14b": Model("WAN22_Animate", {**_WAN, "model_type": "animate", "in_dim": 36, "dim": 5120,
                                                  "ffn_dim": 13824, "num_heads": 40, "num_layers": 40},
                                "832x480x77", _animate_latent, (1, 2, 2), (512, 4096), 5.0, _ANIMATE_COND),
}


@dataclass(frozen=True)
class Mode:
    """How one job runs: ``group`` gives Tandem's GroupConfig fields for n GPUs (None: ComfyUI alone)."""

    label: str                                    # table label; {n} is the GPU count, {half} n // 2
    group: Callable[[int], dict] | None
    multi_gpu: bool = True                        # runs once per requested GPU count ≥ 2; else on 1 GPU only

    def gpu_counts(self, requested: list[int]) -> list[int]:
        return [n for n in requested if n > 1] if self.multi_gpu else [1]


# A later mode is one line here; until Tandem supports it, its cells read "unsupported: <Tandem's message>".
# Data parallel is missing on purpose: it runs several prompts at once, which one prompt's s/step cannot show.
MODES: dict[str, Mode] = {
    "comfyui": Mode("ComfyUI, 1 GPU", None, multi_gpu=False),
    "tandem1": Mode("Tandem, 1 GPU", lambda n: dict(gpu_count=1, ulysses_degree=1), multi_gpu=False),
    "usp": Mode("Tandem, Ulysses {n}", lambda n: dict(gpu_count=n, ulysses_degree=n)),
    "ring": Mode("Tandem, Ring {n}", lambda n: dict(gpu_count=n, ulysses_degree=1, ring_degree=n)),
    "ulysses-ring": Mode("Tandem, Ulysses {half} × Ring 2",
                         lambda n: dict(gpu_count=n, ulysses_degree=max(1, n // 2), ring_degree=2)),
    "fsdp": Mode("Tandem, FSDP over {n}", lambda n: dict(gpu_count=n, ulysses_degree=1, fsdp=True)),
    "usp+fsdp": Mode("Tandem, Ulysses {n} + FSDP", lambda n: dict(gpu_count=n, ulysses_degree=n, fsdp=True)),
    "fsdp+offload": Mode("Tandem, Ulysses {n} + FSDP + CPU offload",
                         lambda n: dict(gpu_count=n, ulysses_degree=n, fsdp=True, fsdp_cpu_offload=True)),
    "cfg-parallel": Mode("Tandem, CFG-parallel on {n}",
                         lambda n: dict(gpu_count=n, cfg_degree=2, ulysses_degree=max(1, n // 2))),
}
DEFAULT_MODES = ("comfyui", "tandem1", "usp")
