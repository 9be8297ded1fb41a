"""The Ray actor: one per GPU (or per CPU slot without GPUs). Holds its process-group rank and its models."""
import json
import os
import threading
import time
from dataclasses import dataclass, field
from functools import partial

import comfy.model_management
import comfy.model_patcher
import comfy.patcher_extension
import ray
import torch
import torch.distributed as dist

from ..models import adapter_for, fsdp_blocks
from ..parallel import cfg, data, formats, fsdp, layout, lora, process_group, tiles, weights
from ..parallel.attention import resolve_backend
from ..parallel.degrees import GroupConfig, TandemConfigError, validate_heads
from ..parallel.sequence import SequenceShard
from ..parallel.staging import reader_threads
from . import controlnet, transport
from .job import Job


@dataclass
class Resident:
    """A loaded model on this worker."""
    patcher: weights.ResidentModelPatcher
    shard: SequenceShard | None                 # the sequence split its attention uses, if any
    sources: dict[str, torch.Tensor]            # the file's tensors (mmap views): the originals LoRA patches
    read_bytes: int | None                      # full-tensor bytes this rank read for the host (fan-out)
    shard_bytes: int                            # bytes of its own FSDP shards this rank read
    lora: object = None                         # the patches_uuid the weights carry now
    lora_keys: set[str] = field(default_factory=set)   # and the keys it patched


class Worker:
    """Stateful: joins the group once, then loads models and samples on request from the nodes."""

    def __init__(self):
        """Its rank and the group's settings come with ``join``: a worker can be started (its process up, torch and
        ComfyUI imported) before any Tandem Init says what it will be (``workers.group.warm``)."""
        self.rank = 0
        self.config: GroupConfig | None = None
        self.device = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
        self.models: dict[tuple, Resident] = {}
        self.vaes: dict[str, object] = {}      # the VAE last used by Tandem VAE Decode / Encode, by the host's key
        self.layout: layout.Layout | None = None
        self.warnings: list[str] = []
        self._progress = (0, 0)
        self._steps: list[tuple] = []  # (step, x0, x, total) not yet fetched by the host (rank 0, with previews)
        self._steps_lock = threading.Lock()
        self._rows = 0                 # latent rows the DiT ran this job: CFG-parallel halves them
        self._interrupt = threading.Event()

    def address(self) -> tuple[str, int]:
        return ray.util.get_node_ip_address(), process_group.free_port()

    def join(self, rank: int, config: dict, host: str, port: int, hosts: list[str]) -> dict:
        """Become ``rank`` of the group ``config`` describes: join the process group, pass the self-test, build the
        layout's sub-groups (``hosts``: every rank's host, as the group start placed them)."""
        self.rank, self.config = rank, GroupConfig(**config)
        # Loading copies weights with CPU threads (Ray gives an actor one): the cores of this host, shared by its ranks.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // hosts.count(hosts[rank])))
        if host == "127.0.0.1" and self.device.type == "cpu":
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")    # one machine: keep gloo's traffic on loopback
        process_group.join(host, port, self.rank, self.config.world_size, self.device, self.config.timeout_s)
        process_group.self_test(self.device, self.config.timeout_s)
        self.layout = layout.build(self.config, self.rank, hosts, self.device.type)
        self.attend, warning = resolve_backend(self.config.attention, self.device, self.config.ring_degree > 1)
        if warning:
            self.warnings.append(warning)
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        return {"rank": self.rank, "pid": os.getpid(), "host": ray.util.get_node_ip_address(),
                "node": ray.get_runtime_context().get_node_id(), "device": name, "warnings": self.warnings,
                "layout": self.layout.describe()}

    def ping(self) -> int:
        return os.getpid()

    def load(self, path: str, weight_dtype: str, unet_config: dict | None = None, fanout: str | None = None) -> dict:
        """Load (or reuse) a diffusion model, weights once per host, prepared for this group's parallel layout.

        ``unet_config`` overrides what ComfyUI's detection infers from the file's keys; ``fanout`` (one of
        ``weights.FANOUTS``) overrides how the host's ranks share reading the file (see ``_fanout``)."""
        self._check_readable(path)
        key = (path, weight_dtype, formats.identity(path), json.dumps(unet_config, sort_keys=True), fanout)
        if key not in self.models:
            try:
                self.models[key] = self._load(path, weights.model_options(weight_dtype), unet_config,
                                              self._fanout(fanout))
            except torch.OutOfMemoryError:
                raise TandemConfigError(
                    f"{os.path.basename(path)} does not fit in this GPU's memory: turn FSDP on in Tandem Init "
                    "(and CPU offload if that is not enough), or pick an fp8 weight dtype or a smaller "
                    "quantization") from None
        resident = self.models[key]
        params = list(resident.patcher.model.diffusion_model.parameters())
        local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
        return {"key": key, "model": type(resident.patcher.model.model_config).__name__,
                "read_bytes": resident.read_bytes, "shard_bytes": resident.shard_bytes,
                "local_params": sum(p.numel() for p in local), "local_bytes": sum(p.numel() * p.element_size() for p in local),
                "dtypes": sorted({str(p.dtype) for p in params})}

    def _check_readable(self, path: str) -> None:
        """Every host reads its own copy of a file, at the path ComfyUI's host gave: one missing or unreadable on some
        host is one line naming those hosts and the path, raised by every rank before any of them starts loading
        (a rank that failed alone would leave the others waiting in a collective)."""
        try:
            with open(path, "rb"):
                problem = None
        except OSError as e:
            problem = e.strerror or type(e).__name__
        problems: list[str | None] = [None] * self.config.world_size
        dist.all_gather_object(problems, problem)
        failing = {self.layout.hosts[rank]: p for rank, p in enumerate(problems) if p}
        if failing:
            where = "; ".join(f"on host {host}: {problem}" for host, problem in failing.items())
            raise TandemConfigError(f"{path} cannot be read {where}: every host reads its own copy at the same path "
                                    "as on ComfyUI's host; copy the file there")

    def _fanout(self, choice: str | None) -> weights.Fanout | None:
        """How this host's ranks share reading the file. By default each GPU reads 1/N of it and broadcasts that
        to the others (``striped``): the GPU link (NVLink ~ 100+ GB/s, PCIe ≥ 16 GB/s) outruns one process copying
        from the page cache, and the file is read from disk at most once. CPU workers share the mmap itself."""
        choice = choice or ("striped" if self.device.type == "cuda" else "every-rank")
        if choice not in weights.FANOUTS:
            raise TandemConfigError(f"unknown weight fan-out {choice!r}: use one of {', '.join(weights.FANOUTS)}")
        if choice == "every-rank" or dist.get_world_size(self.layout.host) == 1:
            return None
        return weights.Fanout(self.layout.host, striped=choice == "striped")

    def _load(self, path: str, options: dict, unet_config: dict | None, fanout: weights.Fanout | None) -> Resident:
        """One pipeline for every format: open (model on ``meta``), install sequence parallelism, shard, fill."""
        opened = formats.format_of(path).open(path, options, unet_config)
        model, diffusion_model = opened.model, opened.model.diffusion_model
        shard = None
        grid = self.layout
        if grid.sequence is not None:
            adapter = adapter_for(diffusion_model)
            validate_heads(self.config.ulysses_degree, adapter.num_heads(diffusion_model))
            shard = SequenceShard(grid.sequence, ulysses_group=grid.ulysses, ring_group=grid.ring)
            adapter.install_sequence_parallel(diffusion_model, shard, self.attend)
        computed = weights.computed_buffers(model, opened.sd)     # while on meta: FSDP's to_empty hides the lost ones
        if self.config.fsdp:
            fsdp.shard(diffusion_model, fsdp_blocks(diffusion_model), grid.mesh, self.config.fsdp_cpu_offload)
            diffusion_model.to_empty(device="cpu" if self.config.fsdp_cpu_offload else self.device)
        local_ranks = dist.get_world_size(self.layout.host)
        missing, shard_bytes = weights.materialize(diffusion_model, opened.sd, self.device, opened.ranges, fanout,
                                      reader_threads(local_ranks), opened.decode, computed)
        if missing:
            raise TandemConfigError(f"{os.path.basename(path)} lacks {len(missing)} weights that ComfyUI's "
                                    f"{type(model.model_config).__name__} needs (e.g. {missing[0]}): "
                                    "it is incomplete or not this kind of model")
        model.device = self.device
        patcher = weights.ResidentModelPatcher(model, load_device=self.device, offload_device=self.device)
        diffusion_model.register_forward_pre_hook(self._count_rows)
        return Resident(patcher, shard, opened.sd, fanout.read_bytes[fanout.me] if fanout else None, shard_bytes)

    def _count_rows(self, module, args) -> None:
        self._rows += args[0].shape[0] if args else 0

    def sample(self, key: tuple, packed: bytes) -> tuple[torch.Tensor | None, dict]:
        """Run one job (``workers.job``) on a clone of the resident model, on this replica's rows of the batch; each
        replica's first rank returns its rows of the latent (``gather_latent`` joins them), every rank returns what
        it computed on. Rank 0 keeps each step's x0 and x for the host's callback (``steps``)."""
        started = time.perf_counter()
        resident = self.models[key]
        patcher = resident.patcher.clone()
        job: Job = transport.unpack(packed, partial(self._resolve, patcher))
        job.apply(patcher)
        self._patch_weights(resident, patcher)
        if self.layout.cfg is not None:     # innermost: the guider's options already hold the host's wrappers
            comfy.patcher_extension.add_wrapper_with_key(
                comfy.patcher_extension.WrappersMP.CALC_COND_BATCH, "tandem_cfg",
                cfg.split_branches(self.layout.cfg, self.layout.at.branch),
                job.guider.model_options, is_model_options=True)
        shard = resident.shard
        if shard is not None:
            shard.reset_stats()
        self._interrupt.clear()
        self._rows, self._progress = 0, (0, 0)
        self.steps()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        step_ends = [time.perf_counter()]
        report = job.previews and self.rank == 0

        def on_step(step, x0, x, total_steps):
            if report:
                with self._steps_lock:
                    self._steps.append((step, x0.cpu(), x.cpu(), total_steps))
            self._progress = (step + 1, total_steps)
            step_ends.append(time.perf_counter())
            if self._stop_requested():
                raise comfy.model_management.InterruptProcessingException()

        controlnet.place(job.guider.original_conds.values(), self.device)
        own = None
        if self.config.dp_degree > 1:
            rows, own = data.batch_rows(job.latent_image.shape[0], self.config.dp_degree, self.layout.at.replica)
            job.take_rows(rows)
        samples = job.run(on_step)[:own]
        stats = {"rank": self.rank, "rows": self._rows, **(shard.stats() if shard else {}),
                 "step_s": [b - a for a, b in zip(step_ends, step_ends[1:])],
                 "setup_s": step_ends[0] - started, "run_s": time.perf_counter() - step_ends[0]}
        if self.device.type == "cuda":
            stats["peak_vram_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        leads = self.layout.leads_replica and len(samples)
        return (samples.cpu() if leads else None), stats

    def _resolve(self, patcher: comfy.model_patcher.ModelPatcher, name: str):
        """The worker's object for what the host's job names (see ``workers.standin.RemoteSampling._reference``)."""
        if name == "patcher":
            return patcher
        if name == "outer-sample":
            return _pass_through
        return patcher.model.get_submodule(name.removeprefix("module:"))

    def _patch_weights(self, resident: Resident, patcher: comfy.model_patcher.ModelPatcher) -> None:
        """Give the resident weights exactly the job's weight patches (LoRA). They are written in place from the file
        (see ``parallel/lora``), only when the host's patch set changed (ComfyUI gives every new set a new
        ``patches_uuid``); the job's clone then carries none, so ComfyUI's loader never patches these weights."""
        identity = patcher.patches_uuid if patcher.patches else None
        if resident.lora != identity:
            keys = resident.lora_keys | set(patcher.patches)
            resident.lora, resident.lora_keys = "partly written", keys
            lora.set_weights(patcher.model, resident.sources, patcher.patches, keys, self.device)
            resident.lora, resident.lora_keys = identity, set(patcher.patches)
        patcher.patches = {}

    def vae(self, packed: bytes) -> tuple[torch.Tensor | tuple | None, dict]:
        """Tiled VAE decode or encode of one input over the whole group (``parallel/tiles``); rank 0 returns it (as a
        shared file when the host asked for files), every rank the tiles it ran and its peak VRAM. The VAE's weights
        come from the host (shared files, written once while its VAE lives) and are built into ComfyUI's VAE here
        once per host VAE; it blends its tiles on this worker's device."""
        import comfy.sd     # not at import: it is ComfyUI's largest import, and only this method needs it

        request = transport.unpack(packed)
        if request["key"] not in self.vaes:
            vae = comfy.sd.VAE(sd=request["sd"])
            vae.output_device = self.device
            self.vaes = {request["key"]: vae}
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        out, ran = tiles.run(self.vaes[request["key"]], request["method"], request["input"], request["kwargs"],
                             self.device)
        if out is not None:
            out = transport.hand_over(out) if request["files"] else out.cpu()
        stats = {"rank": self.rank, "tiles": ran}
        if self.device.type == "cuda":
            stats["peak_vram_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        return out, stats

    def steps(self) -> list[tuple]:
        """The steps rank 0 finished since the host last asked: (step, x0, x, total) each."""
        with self._steps_lock:
            taken, self._steps = self._steps, []
        return taken

    def _stop_requested(self) -> bool:
        """Every rank learns in the same step whether any rank was asked to stop, so none waits alone."""
        flag = torch.tensor([1.0 if self._interrupt.is_set() else 0.0], device=self.device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def progress(self) -> tuple[int, int]:
        return self._progress

    def interrupt(self) -> None:
        self._interrupt.set()


def _pass_through(executor, *args, **kwargs):
    """Tandem's host-side OUTER_SAMPLE wrapper, as the workers see it: their guider samples here."""
    return executor(*args, **kwargs)
