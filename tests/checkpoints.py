"""Tiny random-weight DiT checkpoints built from ComfyUI's own model classes, for CPU tests.

Each family is a ComfyUI ``supported_models`` class plus an explicit ``unet_config``. The file written is the
diffusion model's ``state_dict()`` (no prefix), i.e. the real key layout that ``comfy.sd.load_diffusion_model``
reads. ComfyUI's detection (``comfy/model_detection.py``) infers some dims from key shapes and hard-codes others,
which decides whether a tiny file can be detected:

- Wan 2.1 and HunyuanVideo: heads = hidden // 128, so hidden 256 gives 2 heads: the tiny file is detected
  (``wan21_t2v_3heads``: hidden 384, 3 heads, which no Ulysses degree above 1 but 3 divides).
- Flux: detection fixes num_heads = 24 and the rope axes sum to 128, so hidden must be 3072 (one double block is
  already ~340M params). The tiny file keeps the real keys but must be loaded with its explicit config
  (``load_checkpoint``); ``detection_state_dict`` gives the same layout at detectable width on the meta device.
- Qwen-Image: detection reads only in_channels and the layer count (hidden stays 3072), same as Flux for the tiny
  file; ``qwen_image_min`` is the smallest file detection accepts: real width, zero blocks, bf16, ~81 MB.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from tandem.workers.comfyui import import_comfyui

import_comfyui()

import comfy.model_base  # noqa: E402
import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.sample  # noqa: E402
import comfy.sd  # noqa: E402
import comfy.supported_models  # noqa: E402
import comfy.utils  # noqa: E402
from safetensors.torch import save_file  # noqa: E402


@dataclass(frozen=True)
class Family:
    """One test model: ComfyUI's config class, the unet_config it is built with, and how its inputs look."""
    config_class: type
    unet_config: dict
    detected: bool               # True: comfy.sd.load_diffusion_model detects the file as ``config_class``
    latent_shape: tuple[int, ...]
    context_dim: int
    extra_cond: tuple[str, ...] = ()   # conditioning keys the model needs besides the text context
    dtype: torch.dtype = torch.float32
    detect_overrides: dict = field(default_factory=dict)  # unet_config changes that make the layout detectable
    scaled_fp8: bool = False     # ComfyUI's "scaled fp8" file: fp8 Linear weights, fp32 scales, fp16 biases
    qk_norm_scale: float = 1.0   # multiplies the QK-norm gains: sharper attention, whose result shows token positions


_WAN = dict(image_model="wan2.1", model_type="t2v", patch_size=(1, 2, 2), in_dim=16, dim=256, ffn_dim=512,
            freq_dim=256, text_dim=4096, out_dim=16, num_heads=2, num_layers=2, window_size=(-1, -1),
            qk_norm=True, cross_attn_norm=True, eps=1e-6)
_QWEN = dict(image_model="qwen_image", patch_size=2, in_channels=64, out_channels=16, num_layers=2,
             attention_head_dim=128, num_attention_heads=2, joint_attention_dim=3584, pooled_projection_dim=768,
             guidance_embeds=False, axes_dims_rope=(16, 56, 56))
_HUNYUAN = dict(image_model="hunyuan_video", in_channels=16, out_channels=16, patch_size=[1, 2, 2], vec_in_dim=768,
                axes_dim=[16, 56, 56], meanflow=False, context_in_dim=4096, hidden_size=256, mlp_ratio=4.0,
                num_heads=2, depth=2, depth_single_blocks=2, theta=256, qkv_bias=True, byt5=False,
                guidance_embed=True, use_cond_type_embedding=False, vision_in_dim=None)
# Chroma: Flux's blocks, modulations from a small approximator (in_dim 64 = 16 + 16 + 32 is fixed by its forward);
# Chroma Radiance: the same on 16×16 pixel patches, a per-patch NeRF head instead of final_layer (kept tiny here).
_CHROMA = dict(image_model="chroma", in_channels=64, out_channels=64, context_in_dim=4096, hidden_size=256,
               mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[16, 56, 56], theta=10000,
               patch_size=2, qkv_bias=True, in_dim=64, out_dim=256, hidden_dim=64, n_layers=1)
_CHROMA_RADIANCE = {**_CHROMA, "image_model": "chroma_radiance", "in_channels": 3, "out_channels": 3, "patch_size": 16,
                    "nerf_hidden_size": 16, "nerf_mlp_ratio": 2, "nerf_depth": 2, "nerf_max_freqs": 8,
                    "nerf_tile_size": 512, "nerf_final_head_type": "conv", "nerf_embedder_dtype": torch.float32}
# Flux 2: ComfyUI's Flux class with global modulation, 4 RoPE axes (text ids on the 4th), 128-channel latents in 1×1
# patches, references placed by "index"; detection fixes 48 heads of 128.
_FLUX2 = dict(image_model="flux2", in_channels=128, out_channels=128, vec_in_dim=None, context_in_dim=1024,
              hidden_size=256, mlp_ratio=3.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[32, 32, 32, 32],
              theta=2000, patch_size=1, qkv_bias=False, guidance_embed=True, global_modulation=True,
              mlp_silu_act=True, ops_bias=False, default_ref_method="index", ref_index_scale=10.0)

FAMILIES: dict[str, Family] = {
    "wan21_t2v": Family(comfy.supported_models.WAN21_T2V, _WAN, True, (1, 16, 1, 8, 8), 4096),
    # ~420 MB: big enough that a private copy per worker shows clearly in the host-memory test
    "wan21_t2v_420mb": Family(comfy.supported_models.WAN21_T2V,
                              {**_WAN, "dim": 1024, "ffn_dim": 4096, "num_heads": 8, "num_layers": 6}, True,
                              (1, 16, 1, 8, 8), 4096),
    # Wan 2.2 TI2V (5B layout, tiny): 48-channel latents and one timestep per frame when a noise mask is set
    "wan22_ti2v": Family(comfy.supported_models.WAN22_T2V, {**_WAN, "in_dim": 48, "out_dim": 48}, True,
                         (1, 48, 1, 8, 8), 4096),
    "wan21_t2v_scaled_fp8": Family(comfy.supported_models.WAN21_T2V, _WAN, True, (1, 16, 1, 8, 8), 4096,
                                   scaled_fp8=True),
    # VACE: one control block beside the two main ones; its context is 32 frame + 64 mask channels
    "wan21_vace": Family(comfy.supported_models.WAN21_Vace,
                         {**_WAN, "model_type": "vace", "vace_layers": 1, "vace_in_dim": 96}, True,
                         (1, 16, 1, 8, 8), 4096),
    "wan21_t2v_4heads": Family(comfy.supported_models.WAN21_T2V, {**_WAN, "dim": 512, "num_heads": 4}, True,
                               (1, 16, 1, 8, 8), 4096),
    "wan21_t2v_8heads": Family(comfy.supported_models.WAN21_T2V, {**_WAN, "dim": 1024, "num_heads": 8}, True,
                               (1, 16, 1, 8, 8), 4096),
    "wan21_t2v_3heads": Family(comfy.supported_models.WAN21_T2V, {**_WAN, "dim": 384, "num_heads": 3}, True,
                               (1, 16, 1, 8, 8), 4096),
    "wan21_i2v": Family(comfy.supported_models.WAN21_I2V, {**_WAN, "model_type": "i2v", "in_dim": 36}, True,
                        (1, 16, 1, 8, 8), 4096),
    "hunyuan_video": Family(comfy.supported_models.HunyuanVideo, _HUNYUAN, True, (1, 16, 1, 8, 8), 4096,
                            ("pooled_output", "guidance")),
    "hunyuan_video_i2v": Family(   # HunyuanVideo I2V: 16 noise + 16 image + 1 mask input channels
        comfy.supported_models.HunyuanVideoI2V, {**_HUNYUAN, "in_channels": 33}, True, (1, 16, 1, 8, 8), 4096,
        ("pooled_output", "guidance")),
    # HunyuanImage 2.1 (2D, 1×1 patches, 2 RoPE axes, ByT5 glyph tokens after the text, meanflow) and HunyuanVideo 1.5
    # (1×1×1 patches, no single blocks, vision and ByT5 tokens before the text, 32 noise + 32 image + 1 mask
    # channels): detected from the tiny files; bf16 on disk (ComfyUI runs them in fp32 on the CPU) to halve the fixed
    # 1472→2048→2048 ByT5 mapper.
    "hunyuan_image21": Family(
        comfy.supported_models.HunyuanImage21,
        {**_HUNYUAN, "in_channels": 64, "out_channels": 64, "patch_size": [1, 1], "vec_in_dim": None,
         "axes_dim": [64, 64], "context_in_dim": 512, "byt5": True, "meanflow": True}, True, (1, 64, 8, 8), 512,
        ("guidance",), dtype=torch.bfloat16),
    "hunyuan_video15": Family(
        comfy.supported_models.HunyuanVideo15,
        {**_HUNYUAN, "in_channels": 65, "out_channels": 32, "patch_size": [1, 1, 1], "vec_in_dim": None,
         "context_in_dim": 512, "depth_single_blocks": 0, "byt5": True, "guidance_embed": False,
         "use_cond_type_embedding": True, "vision_in_dim": 1152}, True, (1, 32, 1, 8, 8), 512, dtype=torch.bfloat16),
    "chroma": Family(comfy.supported_models.Chroma, _CHROMA, False, (1, 16, 8, 8), 4096, ("guidance",),
                     detect_overrides={"hidden_size": 3072, "num_heads": 24, "out_dim": 3072, "hidden_dim": 5120,
                                       "n_layers": 5}),
    "chroma_radiance": Family(comfy.supported_models.ChromaRadiance, _CHROMA_RADIANCE, False, (1, 3, 64, 64), 4096,
                              ("guidance",), detect_overrides={"hidden_size": 3072, "num_heads": 24, "out_dim": 3072,
                                                               "hidden_dim": 5120, "n_layers": 5,
                                                               "nerf_hidden_size": 64, "nerf_mlp_ratio": 4,
                                                               "nerf_depth": 4}),
    # Flux 2 pads the text to 512 tokens, which draw most of the attention at random weights: sharper attention makes
    # the result depend on the image tokens' positions (a wrong RoPE slice moves it 4e-3, not 3e-4)
    "flux2": Family(comfy.supported_models.Flux2, _FLUX2, False, (1, 128, 8, 8), 1024, ("guidance",),
                    detect_overrides={"hidden_size": 6144, "num_heads": 48}, qk_norm_scale=2.0),
    "flux": Family(
        comfy.supported_models.Flux,
        dict(image_model="flux", in_channels=16, out_channels=16, vec_in_dim=768, context_in_dim=4096, hidden_size=256,
             mlp_ratio=4.0, num_heads=2, depth=2, depth_single_blocks=2, axes_dim=[16, 56, 56], theta=10000,
             patch_size=2, qkv_bias=True, guidance_embed=True),
        False, (1, 16, 8, 8), 4096, ("pooled_output", "guidance"),
        detect_overrides={"hidden_size": 3072, "num_heads": 24}),
    "qwen_image": Family(comfy.supported_models.QwenImage, _QWEN, False, (1, 16, 1, 8, 8), 3584,
                         detect_overrides={"num_attention_heads": 24}),
    # LTXV: 32 heads of 8 (detection fixes 32 heads), 2 blocks
    "ltxv": Family(comfy.supported_models.LTXV,
                   dict(image_model="ltxv", num_layers=2, attention_head_dim=8, cross_attention_dim=256), True,
                   (1, 128, 1, 4, 4), 4096, ("attention_mask",)),
    "qwen_image_min": Family(comfy.supported_models.QwenImage, {**_QWEN, "num_layers": 0, "num_attention_heads": 24},
                             True, (1, 16, 1, 8, 8), 3584, dtype=torch.bfloat16),
    # Lumina 2 / Z-Image (NextDiT): detection fixes the head layout only at the real widths (2304 / 3840), so the
    # tiny files load with their explicit config. Lumina 2 keeps GQA (2 heads, 1 KV head); Z-Image keeps its
    # modulation, time scale and pad tokens (both parts padded to a multiple of 32), at the 256 width it needs.
    "lumina2": Family(comfy.supported_models.Lumina2, dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=192, cap_feat_dim=256, n_layers=2, qk_norm=True,
        n_heads=2, n_kv_heads=1, axes_dims=[32, 32, 32], axes_lens=[300, 512, 512], rope_theta=10000.0,
        ffn_dim_multiplier=1.0), False, (1, 16, 8, 8), 256, ("attention_mask",),
        detect_overrides={"dim": 2304, "n_heads": 24, "n_kv_heads": 8, "cap_feat_dim": 2304}),
    "z_image": Family(comfy.supported_models.ZImage, dict(
        image_model="lumina2", patch_size=2, in_channels=16, dim=256, cap_feat_dim=256, n_layers=2, qk_norm=True,
        n_heads=2, n_kv_heads=2, axes_dims=[32, 48, 48], axes_lens=[1536, 512, 512], rope_theta=256.0,
        ffn_dim_multiplier=1.0, z_image_modulation=True, time_scale=1000.0, pad_tokens_multiple=32), False,
        (1, 16, 8, 8), 256, detect_overrides={"dim": 3840, "n_heads": 30, "n_kv_heads": 30, "cap_feat_dim": 2560}),
    # SD3.5 Medium's layout (MMDiT-X: RMS q/k norms, a second image-only attention in block 0), detected: heads =
    # depth and width = 64 · depth; pos_embed for grids up to 16 × 16 patches; pooled text of 768 (real: 2048)
    "sd35": Family(comfy.supported_models.SD3, dict(
        in_channels=16, patch_size=2, out_channels=16, depth=2, input_size=None, adm_in_channels=768,
        context_embedder_config={"target": "torch.nn.Linear", "params": {"in_features": 4096, "out_features": 128}},
        num_patches=256, pos_embed_max_size=16, qk_norm="rms", pos_embed_scaling_factor=None,
        x_block_self_attn_layers=[0]), True, (1, 16, 8, 8), 4096, ("pooled_output",)),
    # Wan 2.2 Fun Camera (CameraWanModel): a camera adapter (24 Plücker channels at pixel size) added to the tokens
    "wan22_camera": Family(comfy.supported_models.WAN22_Camera, {**_WAN, "model_type": "camera_2.2", "in_dim": 36},
                           True, (1, 16, 1, 8, 8), 4096),
    # Wan 2.1 HuMo (HumoWanModel): per-frame audio cross-attention in every block; its audio projection has fixed
    # sizes (8 × 5 × 1280 features per frame → 16 tokens of 1536): ~40M parameters whatever the width, so bf16 on disk
    "wan21_humo": Family(comfy.supported_models.WAN21_HuMo, {**_WAN, "model_type": "humo"}, True, (1, 16, 1, 8, 8),
                         4096, dtype=torch.bfloat16),
    # Wan 2.2 S2V (WanModel_S2V): audio injected per frame after block 0 (its fixed injection layers), reference and
    # frame-packed motion tokens appended before the blocks
    "wan22_s2v": Family(comfy.supported_models.WAN22_S2V, {**_WAN, "model_type": "s2v"}, True, (1, 16, 1, 8, 8), 4096),
    # HiDream-I1 (tiny): 2 double- and 2 single-stream blocks of width 64 (2 heads of 32, RoPE spanning the head as in
    # the real 128), MoE feed-forwards with 4 experts (2 active) in the image stream, T5 and Llama-3 text of 256 (real
    # 4096), one Llama layer per block (llama_layers), pooled CLIP of 768 (real 2048). Detection fixes 20 heads of 128
    "hidream": Family(comfy.supported_models.HiDream, dict(
        image_model="hidream", patch_size=2, in_channels=16, out_channels=16, num_layers=2, num_single_layers=2,
        attention_head_dim=32, num_attention_heads=2, caption_channels=[256, 256], text_emb_dim=768,
        num_routed_experts=4, num_activated_experts=2, axes_dims_rope=[16, 8, 8], max_resolution=[128, 128],
        llama_layers=[0, 1, 2, 3]), False, (1, 16, 8, 8), 256, ("pooled_output", "conditioning_llama3"),
        detect_overrides={"attention_head_dim": 128, "num_attention_heads": 20, "axes_dims_rope": [64, 32, 32],
                          "caption_channels": [4096, 4096], "text_emb_dim": 2048}),
    # Omnigen 2 (tiny): width 128, 2 heads and 1 KV head (GQA), 2 blocks in each refiner and 2 main blocks; text of 256
    # (real: Qwen2.5-VL's 2048). Detection fixes 21 heads (7 KV) of 120
    "omnigen2": Family(comfy.supported_models.Omnigen2, dict(
        image_model="omnigen2", patch_size=2, in_channels=16, out_channels=None, hidden_size=128, num_layers=2,
        num_refiner_layers=2, num_attention_heads=2, num_kv_heads=1, multiple_of=256, ffn_dim_multiplier=None,
        norm_eps=1e-5, axes_dim_rope=[16, 24, 24], axes_lens=[1024, 1664, 1664], text_feat_dim=256,
        timestep_scale=1000.0), False, (1, 16, 8, 8), 256, ("attention_mask",),
        detect_overrides={"hidden_size": 2520, "num_attention_heads": 21, "num_kv_heads": 7,
                          "axes_dim_rope": [40, 40, 40], "text_feat_dim": 2048}),
    # Wan 2.2 Animate (AnimateWanModel): pose latents added to the patch embedding, a face block after every fifth
    # block; without pose and face it samples as I2V. Its motion and face encoders have fixed sizes (~36M
    # parameters), so bf16 on disk; 5 blocks: one face block per 5, which detection needs
    "wan22_animate": Family(comfy.supported_models.WAN22_Animate,
                            {**_WAN, "model_type": "animate", "in_dim": 36, "num_layers": 5},
                            True, (1, 16, 1, 8, 8), 4096, dtype=torch.bfloat16),
    # Cosmos Predict 2 text-to-image (MiniTrainDIT): width 128, 2 heads, 2 blocks, otherwise what ComfyUI's detection
    # gives (AdaLN-LoRA 256, RoPE extrapolation 4 on H and W); its RoPE ranges are buffers computed when it is built.
    # Detection fixes heads and blocks only at the real widths (2048: 16 heads, 28 blocks)
    "cosmos_predict2": Family(comfy.supported_models.CosmosT2IPredict2, dict(
        image_model="cosmos_predict2", max_img_h=240, max_img_w=240, max_frames=128, in_channels=16, out_channels=16,
        patch_spatial=2, patch_temporal=1, model_channels=128, concat_padding_mask=True, crossattn_emb_channels=1024,
        pos_emb_cls="rope3d", pos_emb_learnable=True, pos_emb_interpolation="crop", min_fps=1, max_fps=30,
        use_adaln_lora=True, adaln_lora_dim=256, num_blocks=2, num_heads=2, extra_per_block_abs_pos_emb=False,
        rope_h_extrapolation_ratio=4.0, rope_w_extrapolation_ratio=4.0, rope_t_extrapolation_ratio=1.0,
        extra_h_extrapolation_ratio=1.0, extra_w_extrapolation_ratio=1.0, extra_t_extrapolation_ratio=1.0,
        rope_enable_fps_modulation=False), False, (1, 16, 1, 8, 8), 1024,
        detect_overrides={"model_channels": 2048, "num_heads": 16}),
    # a model Tandem's sequence parallelism does not cover, small and detected: the "unsupported" error case.
    # PixArt Sigma (PixArtMS), the smallest such DiT ComfyUI detects from a file: detection fixes the width (1152,
    # 16 heads) and counts the blocks, so one block, ~37M parameters, bf16 on disk; its sin-cos position embedding
    # is scaled by round(latent side / 64), so latents of at least 33 × 33 (40 × 40 here)
    "pixart_sigma": Family(comfy.supported_models.PixArtSigma, dict(
        image_model="pixart_sigma", num_heads=16, patch_size=2, hidden_size=1152, in_channels=4, depth=1,
        model_max_length=120, micro_condition=False), True, (1, 4, 40, 40), 4096, dtype=torch.bfloat16),
}


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """ComfyUI's ops skip weight init (params start as ``torch.empty``): give every parameter seeded values.

    Norm scales get 1 + noise so activations keep their size; everything else N(0, 0.02).
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            values = torch.randn(param.shape, generator=generator) * 0.02
            if param.ndim == 1 and "norm" in name and not name.endswith("bias"):
                values += 1.0
            param.copy_(values)
        saved = module.state_dict().keys()     # saved buffers (SD3's pos_embed) start as torch.empty too
        for name, buffer in module.named_buffers():
            if name in saved and buffer.is_floating_point():
                buffer.copy_(torch.randn(buffer.shape, generator=generator) * 0.02)


def _model(family: str) -> comfy.model_base.BaseModel:
    """Build the family's model the way ``comfy.sd.load_diffusion_model_state_dict`` does, in fp32 on the CPU."""
    spec = FAMILIES[family]
    model_config = spec.config_class(spec.unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    return model_config.get_model({}, "")


def _patcher(model: comfy.model_base.BaseModel) -> comfy.model_patcher.ModelPatcher:
    return comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                            offload_device=comfy.model_management.unet_offload_device())


def build_model(family: str, seed: int = 0) -> comfy.model_patcher.ModelPatcher:
    """A random-weight model of ``family`` built through ComfyUI's config class with the explicit unet_config."""
    model = _model(family)
    _randomize(model.diffusion_model, seed)
    with torch.no_grad():
        for name, param in model.diffusion_model.named_parameters():
            if name.endswith(("query_norm.scale", "key_norm.scale")):
                param.mul_(FAMILIES[family].qk_norm_scale)
    return _patcher(model)


def _scaled_fp8(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The layout ComfyUI's scaled-fp8 loader reads: every Linear weight as float8_e4m3fn with an fp32
    ``scale_weight`` beside it, Linear biases in fp16, the rest fp32, and the ``scaled_fp8`` marker key."""
    out = {"scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn)}
    linear = {k.rsplit(".", 1)[0] for k, v in state_dict.items() if k.endswith(".weight") and v.ndim == 2}
    for key, value in state_dict.items():
        layer, _, kind = key.rpartition(".")
        if layer in linear and kind == "weight":
            scale = value.abs().max() / 448.0
            out[key] = (value / scale).to(torch.float8_e4m3fn)
            out[f"{layer}.scale_weight"] = scale.float().reshape(())
        elif layer in linear and kind == "bias":
            out[key] = value.half()
        else:
            out[key] = value
    return out


def make_checkpoint(family: str, directory: Path, seed: int = 0) -> Path:
    """Write ``<directory>/tiny_<family>.safetensors`` with seeded random weights and return its path."""
    model = build_model(family, seed).model.diffusion_model
    state_dict = {k: v.detach().to(FAMILIES[family].dtype).contiguous() for k, v in model.state_dict().items()}
    if FAMILIES[family].scaled_fp8:
        state_dict = _scaled_fp8(state_dict)
    path = Path(directory) / f"tiny_{family}.safetensors"
    save_file(state_dict, str(path))
    return path


def load_checkpoint(path: Path, family: str) -> comfy.model_patcher.ModelPatcher:
    """Load a file: through ComfyUI's detection where it can detect the family, else with the explicit config."""
    if FAMILIES[family].detected:
        return comfy.sd.load_diffusion_model(str(path))
    model = _model(family)
    model.load_model_weights(comfy.utils.load_torch_file(str(path)), "")
    return _patcher(model)


def detection_state_dict(family: str) -> dict[str, torch.Tensor]:
    """The family's key layout at a width ComfyUI detects, as meta tensors (shapes only, no memory)."""
    spec = FAMILIES[family]
    with torch.device("meta"):
        model_config = spec.config_class({**spec.unet_config, **spec.detect_overrides})
        model_config.set_inference_dtype(torch.float32, None)
        return dict(model_config.get_model({}, "").diffusion_model.state_dict())


def sample_once(patcher: comfy.model_patcher.ModelPatcher, family: str, steps: int = 1, seed: int = 0) -> torch.Tensor:
    """Run ComfyUI's own sampler (euler, cfg 1 so one model call per step) on seeded inputs of the family's shape."""
    spec = FAMILIES[family]
    generator = torch.Generator().manual_seed(seed)
    latent = torch.zeros(spec.latent_shape)
    extra = {"pooled_output": torch.randn(1, 768, generator=generator), "guidance": 3.5,
             "attention_mask": torch.ones(1, 8, dtype=torch.long)}     # as text encoders give it
    if "conditioning_llama3" in spec.extra_cond:     # HiDream: 8 tokens of each Llama-3 layer its blocks read
        layers = len(set(spec.unet_config["llama_layers"]))
        extra["conditioning_llama3"] = torch.randn(1, layers, 8, spec.context_dim,
                                                  generator=torch.Generator().manual_seed(seed))
    cond = [[torch.randn(1, 8, spec.context_dim, generator=generator), {k: extra[k] for k in spec.extra_cond}]]
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(patcher, noise, steps, 1.0, "euler", "simple", cond, cond, latent, seed=seed)


def wan21_vae_state_dict(dim: int = 8) -> dict[str, torch.Tensor]:
    """ComfyUI's Wan 2.1 VAE at width ``dim`` (real: 96), as the state dict VAE Loader reads (it detects the VAE and
    its width from the weights). ComfyUI's ops leave weights uninitialized: seeded values keep activations finite and
    of unit size (norm scales near 1, weights N(0, 1 / fan-in))."""
    import zlib

    import comfy.ldm.wan.vae

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in comfy.ldm.wan.vae.WanVAE(
            dim=dim, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
            temperal_downsample=[False, True, True], dropout=0.0).state_dict().items()}
    state_dict = {}
    for name, shape in shapes.items():
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(zlib.crc32(name.encode())))
        fan_in = noise[0].numel() if noise.ndim > 1 else 1
        state_dict[name] = 1 + 0.02 * noise if name.endswith("gamma") else \
            noise * (0.02 if noise.ndim == 1 else fan_in ** -0.5)
    return state_dict


def clip_l_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """ComfyUI's CLIP-L text encoder (SD1's class; its config is fixed: 123M parameters) with seeded random weights,
    as the state dict Load CLIP reads."""
    import comfy.sd1_clip

    model = comfy.sd1_clip.SDClipModel(dtype=torch.float32).transformer
    _randomize(model, seed)
    return model.state_dict()
