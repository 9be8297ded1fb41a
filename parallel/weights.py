"""Weights once per host: build ComfyUI's model on ``meta``, then fill it tensor by tensor from the file's mmap.

``comfy.utils.load_torch_file`` returns tensors that view the safetensors mmap, i.e. the page cache that every
worker on the host shares. ComfyUI's own loader then copies them into a CPU model (one private copy per worker);
Tandem instead copies each tensor straight to its device (or, on a CPU worker whose dtype matches, uses the mmap
view itself), and with FSDP each rank copies only its own dim-0 shard.
"""
import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import torch
from torch.distributed.tensor import DTensor


def open_checkpoint(path: str) -> tuple[dict, dict | None]:
    """The file's tensors as views of its mmap (no private copy), and its metadata."""
    return comfy.utils.load_torch_file(path, return_metadata=True)


def build_on_meta(sd: dict, metadata: dict | None, model_options: dict, unet_config: dict | None = None
                  ) -> tuple[comfy.model_base.BaseModel, dict] | tuple[None, None]:
    """ComfyUI's ``load_diffusion_model_state_dict`` up to the model's construction, with the DiT on ``meta``.

    Detection, dtype choice and operations are ComfyUI's; only the placement differs. None when ComfyUI's
    detection does not recognise the layout (diffusers-format files: the caller falls back to ComfyUI's loader).
    ``unet_config`` overrides what detection infers (tests build tiny Flux/Qwen-Image files whose head count
    detection cannot infer). Returns the model and the state dict with ComfyUI's key processing applied.
    """
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    stripped = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True)
    sd = stripped or sd
    model_config = comfy.model_detection.model_config_from_unet(sd, "", metadata=metadata)
    if model_config is None:
        return None, None
    model_config.unet_config.update(unet_config or {})
    load_device = comfy.model_management.get_torch_device()
    weight_dtype = None if model_config.scaled_fp8 is not None else comfy.utils.weight_dtype(sd)
    unet_dtype = model_options.get("dtype") or comfy.model_management.unet_dtype(
        model_params=comfy.utils.calculate_parameters(sd),
        supported_dtypes=list(model_config.supported_inference_dtypes), weight_dtype=weight_dtype)
    cast_for = None if model_config.layer_quant_config is not None else unet_dtype
    manual_cast = comfy.model_management.unet_manual_cast(cast_for, load_device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(unet_dtype, manual_cast)
    if model_options.get("fp8_optimizations", False):
        model_config.optimizations["fp8"] = True
    return model_config.get_model(sd, "", device="meta"), model_config.process_unet_state_dict(sd)


# Tensors ComfyUI's ops create with a fixed value when a file lacks them (scaled-fp8 layers' scales are 1).
CONSTRUCTED_DEFAULTS = {"scale_weight": 1.0, "scale_input": 1.0}


class PinnedStager:
    """mmap (pageable) → pinned buffer (CPU threads) → GPU (copy engine), with two buffers so the CPU copy of
    one tensor overlaps the upload of the previous one; pageable uploads would stage through the driver."""

    def __init__(self, device: torch.device, capacity: int = 256 << 20):
        self.device = device
        self.buffers = [torch.empty(capacity, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
        self.uploaded: list[torch.cuda.Event | None] = [None, None]
        self.turn = 0

    def upload(self, source: torch.Tensor) -> torch.Tensor:
        nbytes = source.numel() * source.element_size()
        if nbytes > self.buffers[0].numel() or not source.is_contiguous():
            return source.to(self.device)
        if self.uploaded[self.turn] is not None:
            self.uploaded[self.turn].synchronize()          # this buffer's previous upload has left
        staged = self.buffers[self.turn][:nbytes].view(source.dtype).view(source.shape)
        staged.copy_(source)
        out = torch.empty(source.shape, dtype=source.dtype, device=self.device)
        out.copy_(staged, non_blocking=True)
        self.uploaded[self.turn] = torch.cuda.Event()
        self.uploaded[self.turn].record()
        self.turn ^= 1
        return out


def _place(source: torch.Tensor, like: torch.Tensor, device: torch.device, stager: PinnedStager | None
           ) -> torch.Tensor:
    """``source`` as a tensor of ``like``'s dtype on ``device`` (cast there); the mmap view when nothing changes."""
    if device.type == "cpu":
        return source if source.dtype == like.dtype else source.to(like.dtype)
    return (stager.upload(source) if stager else source.to(device)).to(like.dtype)


@torch.no_grad()
def materialize(module: torch.nn.Module, sd: dict, device: torch.device) -> list[str]:
    """Replace every meta parameter/buffer of ``module`` by the file's tensor on ``device``; return what stayed
    unfilled (keys the file lacks, and buffers a model computes at construction, which ``meta`` cannot keep).

    FSDP-sharded parameters (DTensors, already allocated by ``to_empty``) get only this rank's shard.
    """
    missing = []
    stager = PinnedStager(device) if device.type == "cuda" else None
    for name, tensor in list(module.state_dict(keep_vars=True).items()):
        owner_name, _, attr = name.rpartition(".")
        if name not in sd and attr in CONSTRUCTED_DEFAULTS and not isinstance(tensor, DTensor):
            sd[name] = torch.full(tensor.shape, CONSTRUCTED_DEFAULTS[attr], dtype=tensor.dtype)
        if name not in sd:
            missing.append(name)
            continue
        owner = module.get_submodule(owner_name)
        if isinstance(tensor, DTensor):
            _fill_shard(tensor, sd[name])
        elif attr in owner._parameters:
            owner._parameters[attr] = torch.nn.Parameter(_place(sd[name], tensor, device, stager),
                                                         requires_grad=False)
        else:
            owner._buffers[attr] = _place(sd[name], tensor, device, stager)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    unfilled = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]   # non-persistent
    return missing + [n for n in unfilled if n not in missing]


def _fill_shard(param: DTensor, full: torch.Tensor) -> None:
    """Copy this rank's dim-0 chunk of ``full`` (torch.chunk, as FSDP2 shards) into the sharded parameter."""
    local = param.to_local()
    mesh = param.device_mesh
    chunks = torch.chunk(full, mesh.size(), dim=0)
    rank = mesh.get_local_rank()
    if rank < len(chunks) and local.numel():
        local.copy_(chunks[rank].to(local.device, non_blocking=True))


class ResidentModelPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher whose weights Tandem placed (on the GPU, as FSDP shards, or as mmap views): ComfyUI's memory
    manager keeps its bookkeeping but never moves or offloads them, which would make private host copies or break
    the FSDP shards. Weight patches (LoRA) would need the full weights, so they are refused."""

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        if self.patches:
            raise NotImplementedError("Tandem does not apply weight patches (LoRA) to its models yet")
        self.model.model_lowvram = False
        self.model.device = self.load_device
        self.model.model_loaded_weight_memory = self.model_size()
        self.model.model_offload_buffer_memory = 0
        self.model.current_weight_patches_uuid = self.patches_uuid
        for callback in self.get_all_callbacks(comfy.patcher_extension.CallbacksMP.ON_LOAD):
            callback(self, device_to, lowvram_model_memory, force_patch_weights, full_load)
        self.apply_hooks(self.forced_hooks, force_apply=True)

    def unpatch_model(self, device_to=None, unpatch_weights=True):
        super().unpatch_model(None, unpatch_weights)

    def partially_unload(self, device_to, memory_to_free=0, force_patch_weights=False):
        return 0
