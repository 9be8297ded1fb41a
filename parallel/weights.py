"""Weights once per host: build ComfyUI's model on ``meta``, then fill it tensor by tensor from the file's mmap.

``comfy.utils.load_torch_file`` returns tensors that view the safetensors mmap, i.e. the page cache that every
worker on the host shares. ComfyUI's own loader then copies them into a CPU model (one private copy per worker);
Tandem instead reads each tensor straight to its device (``staging``; on a CPU worker whose dtype matches it uses
the mmap view itself), with FSDP each rank reads only its own dim-0 shard, and full tensors are read once per host
and broadcast to the host's other GPUs (``Fanout``), so N GPUs cost one read of the file, split N ways.
"""
from collections.abc import Callable
from contextlib import contextmanager
from functools import partial

import comfy.model_base
import comfy.model_detection
import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import comfy.utils
import torch
import torch.distributed as dist
from torch.distributed.tensor import DTensor

from .degrees import TandemConfigError
from .fsdp import shard_of
from .staging import FileRanges, Stager


def model_options(weight_dtype: str) -> dict:
    """ComfyUI's load_diffusion_model options for the Loader's weight dtype (as ComfyUI's UNETLoader does)."""
    dtypes = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e4m3fn_fast": torch.float8_e4m3fn,
              "fp8_e5m2": torch.float8_e5m2, "bf16": torch.bfloat16, "fp16": torch.float16}
    options = {"dtype": dtypes[weight_dtype]} if weight_dtype in dtypes else {}
    if weight_dtype == "fp8_e4m3fn_fast":
        options["fp8_optimizations"] = True
    return options


WEIGHT_DTYPES = ("default", "fp8_e4m3fn", "fp8_e4m3fn_fast", "fp8_e5m2", "bf16", "fp16")


def build_on_meta(name: str, sd: dict, metadata: dict | None, model_options: dict, unet_config: dict | None = None
                  ) -> tuple[comfy.model_base.BaseModel, dict]:
    """ComfyUI's ``load_diffusion_model_state_dict`` up to the model's construction, with the DiT on ``meta``.

    Detection, dtype choice and operations are ComfyUI's; only the placement differs. A layout ComfyUI's detection
    does not recognise (another kind of model, a diffusers-format file) is a one-line error about the file ``name``.
    ``unet_config`` overrides what detection infers (tests build tiny Flux/Qwen-Image files whose head count
    detection cannot infer). Returns the model and the state dict with ComfyUI's key processing applied.
    """
    prefix = comfy.model_detection.unet_prefix_from_state_dict(sd)
    stripped = comfy.utils.state_dict_prefix_replace(sd, {prefix: ""}, filter_keys=True)
    sd = stripped or sd
    model_config = comfy.model_detection.model_config_from_unet(sd, "", metadata=metadata)
    if model_config is None:
        raise TandemConfigError(f"{name} is not a diffusion model ComfyUI detects from its weights' names (a text "
                                "encoder, a VAE, or a diffusers-format file?): pick a diffusion model in ComfyUI's "
                                "single-file format")
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


FANOUTS = ("striped", "rank0", "every-rank")


class Fanout:
    """Read each full tensor once per host and broadcast it to the host's other ranks.

    ``striped``: each tensor is read by the rank that has read the fewest bytes so far, so the N ranks of a host
    each read 1/N of the file in parallel and the GPU link carries the rest. ``rank0``: rank 0 reads everything.
    """

    def __init__(self, group: dist.ProcessGroup, striped: bool):
        self.group, self.striped = group, striped
        self.me = dist.get_rank(group)
        self.read_bytes = [0] * dist.get_world_size(group)
        self.works: list[dist.Work] = []

    def owner(self, nbytes: int) -> int:
        rank = self.read_bytes.index(min(self.read_bytes)) if self.striped else 0
        self.read_bytes[rank] += nbytes
        return rank

    def broadcast(self, t: torch.Tensor, owner: int) -> dist.Work:
        """Broadcast ``t``'s bytes (gloo has no float8 dtype; bytes are exact for any dtype)."""
        work = dist.broadcast(t.reshape(-1).view(torch.uint8), src=dist.get_global_rank(self.group, owner), group=self.group, async_op=True)
        self.works.append(work)
        return work


def _fill_full(source: torch.Tensor, dtype: torch.dtype, device: torch.device, stager: Stager,
               fanout: Fanout | None, assign: Callable[[torch.Tensor], None], decode: Callable | None) -> None:
    """Queue ``source`` into a new tensor on ``device`` (read here, or broadcast by the rank that reads it), cast to
    ``dtype`` (or ``decode``d) on the device, then ``assign`` it."""
    dst = torch.empty(source.shape, dtype=source.dtype, device=device)

    def done(work: dist.Work | None = None) -> None:
        if decode is None and dst.dtype == dtype:
            assign(dst)
            return
        if work is not None:
            work.wait()
        assign(dst.to(dtype) if decode is None else decode(dst))

    if fanout is None:
        stager.put(source, dst, then=done)
        return
    owner = fanout.owner(dst.numel() * dst.element_size())
    stager.put(source if owner == fanout.me else None, dst, then=lambda: done(fanout.broadcast(dst, owner)))


@torch.no_grad()
def materialize(module: torch.nn.Module, sd: dict, device: torch.device, ranges: FileRanges | None = None,
                fanout: Fanout | None = None, threads: int = 2, decode: dict[str, Callable] | None = None,
                computed: dict[str, torch.Tensor] | None = None) -> tuple[list[str], int]:
    """Replace every meta parameter/buffer of ``module`` by the file's tensor on ``device``, and the buffers the model
    computes at construction by ``computed`` (``computed_buffers``); return what stayed unfilled (keys the file
    lacks) and the bytes of this rank's own FSDP shards it read.
    ``decode`` maps keys whose file tensor is encoded (GGUF blocks outside a quantized layer) to their decoder.

    FSDP-sharded parameters (DTensors, already allocated by ``to_empty``) get only this rank's shard. On a CPU
    worker without ``fanout`` the full tensors are the mmap views themselves (the shared page cache).
    """
    missing, shard_bytes = [], 0
    stager = Stager(ranges, threads) if device.type == "cuda" or fanout is not None else None
    try:
        for name, tensor in list(module.state_dict(keep_vars=True).items()):
            owner_name, _, attr = name.rpartition(".")
            if name not in sd and attr in CONSTRUCTED_DEFAULTS and not isinstance(tensor, DTensor):
                sd[name] = torch.full(tensor.shape, CONSTRUCTED_DEFAULTS[attr], dtype=tensor.dtype)
            if name not in sd:
                missing.append(name)
                continue
            owner = module.get_submodule(owner_name)
            put = partial(assign, owner, attr)
            convert = (decode or {}).get(name)
            if isinstance(tensor, DTensor):
                shard_bytes += _fill_shard(tensor, convert(sd[name].to(device)) if convert else sd[name], stager)
            elif stager is None:
                put(convert(sd[name]) if convert else sd[name].to(tensor.dtype))
            else:
                _fill_full(sd[name], tensor.dtype, device, stager, fanout, put, convert)
    finally:
        if stager is not None:
            stager.finish()
    for work in fanout.works if fanout else ():
        work.wait()
    for name, value in (computed or {}).items():
        owner_name, _, attr = name.rpartition(".")
        assign(module.get_submodule(owner_name), attr, value.to(device))
    unfilled = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]   # non-persistent
    return missing + [n for n in unfilled if n not in missing], shard_bytes


@contextmanager
def _parameters_on_meta():
    """While a model is built: each parameter goes to ``meta`` as it is registered; buffers stay where built."""
    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):
        if param is not None and not param.is_meta:
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    torch.nn.Module.register_parameter = on_meta
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register


def computed_buffers(model: comfy.model_base.BaseModel, sd: dict) -> dict[str, torch.Tensor]:
    """The buffers ComfyUI's diffusion model computes when it is built and does not save (Cosmos Predict 2's RoPE
    ranges), which ``meta`` loses (and FSDP's ``to_empty`` would leave uninitialised), computed again for
    ``materialize``: ComfyUI's model is built a second time on the CPU with each parameter sent to ``meta`` as it is
    registered, so ComfyUI's own construction computes them and no weight is kept. Models without such buffers are not
    built again. One that a second build does not give (a buffer made after construction) is refused in one line."""
    module = model.diffusion_model
    persistent = set(module.state_dict(keep_vars=True))
    lost = [name for name, buffer in module.named_buffers()
            if buffer.is_meta and name not in persistent and name not in sd]
    if not lost:
        return {}
    with _parameters_on_meta():
        rebuilt = dict(model.model_config.get_model(sd, "", device="cpu").diffusion_model.named_buffers())
    unbuilt = [name for name in lost if name not in rebuilt or rebuilt[name].is_meta]
    if unbuilt:
        raise TandemConfigError(f"{type(module).__name__} computes {len(unbuilt)} buffers outside its construction "
                                f"(e.g. {unbuilt[0]}), which Tandem's loading cannot fill: load this model with "
                                "ComfyUI's Load Diffusion Model")
    return {name: rebuilt[name] for name in lost}


def assign(owner: torch.nn.Module, attr: str, value: torch.Tensor) -> None:
    """Make ``value`` the parameter or buffer ``owner.attr`` (a new tensor; the old one is not written)."""
    if attr in owner._parameters:
        owner._parameters[attr] = torch.nn.Parameter(value, requires_grad=False)
    else:
        owner._buffers[attr] = value


def _fill_shard(param: DTensor, full: torch.Tensor, stager: Stager | None) -> int:
    """Copy this rank's dim-0 chunk of ``full`` (torch.chunk, as FSDP2 shards) into the sharded parameter: a
    contiguous byte range of the file, read by this rank alone. Returns its size."""
    local = param.to_local()
    shards, rank = shard_of(param)
    chunks = torch.chunk(full, shards, dim=0)
    if rank >= len(chunks) or not local.numel():
        return 0
    chunk = chunks[rank]
    if stager is None:
        local.copy_(chunk)
    elif chunk.dtype == local.dtype and local.is_contiguous():
        stager.put(chunk, local)
    else:
        staged = torch.empty(chunk.shape, dtype=chunk.dtype, device=local.device)
        stager.put(chunk, staged, then=lambda: local.copy_(staged))
    return chunk.numel() * chunk.element_size()


class ResidentModelPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher whose weights Tandem placed (on the GPU, as FSDP shards, or as mmap views): ComfyUI's memory
    manager keeps its bookkeeping but never moves or offloads them, which would make private host copies or break
    the FSDP shards. Its own weight patching (backups, then patches written over the weights) is refused: LoRAs
    reach these weights through ``parallel/lora``, which keeps no backup, before ComfyUI loads the job's clone."""

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        if self.patches:
            raise NotImplementedError("Tandem writes weight patches into its resident weights itself (parallel/lora); "
                                      "ComfyUI's own patching would keep a backup copy of every patched weight")
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
