"""ControlNets reach the workers inside the conditioning, as ComfyUI's own objects, and run on the worker's device.

ControlNetApplyAdvanced stores a ``comfy.controlnet.ControlNet`` in the conditioning: its model with the weights,
the hint image, strength and step range, the ControlNet it was chained after, and, for latent ControlNets (InstantX
Flux / Qwen-Image), the VAE that encodes the hint. The job (``workers.job``) carries the guider's conditioning like
any other input, every cond in one pickle, so they still share one ControlNet and ComfyUI batches them together.
ComfyUI's ControlNet object does not record the file it was loaded from, so the weights travel with it.

When every worker runs on ComfyUI's host, the job is packed by ``transport``: the ControlNet's and VAE's weights
are written once into files in shared memory (reused while the ControlNet lives, as in consecutive prompts) and each
worker maps them from the page cache, with no host copy of its own; only the small rest goes through Ray. ComfyUI's
model management in the worker loads the ControlNet onto the worker's GPU for the job and frees it with the job.
With workers on other hosts the large tensors go beside the job's pickle into Ray's object store: one copy per host,
which every worker there reads without a copy of its own (``transport.Stored``), sent again with every job.

The devices in the object are those ComfyUI chose in its own process (its GPU, or the CPU for a CPU-only ComfyUI in
front of a GPU cluster), so each worker points the ControlNet's model and its hint VAE at its own device. Dtypes stay
the ones ComfyUI chose.
"""
from collections.abc import Iterable, Iterator

import comfy.controlnet
import torch


def controlnets(conditionings: Iterable[list[dict]]) -> Iterator[comfy.controlnet.ControlBase]:
    """Every ControlNet in these conditionings (a guider's ``original_conds``), the ones it was chained after
    included, each once."""
    seen = set()
    for conditioning in conditionings:
        for options in conditioning:
            control = options.get("control")
            while control is not None and id(control) not in seen:
                seen.add(id(control))
                yield control
                control = control.previous_controlnet


def place(conditionings: Iterable[list[dict]], device: torch.device) -> None:
    """Load every ControlNet's model (and the VAE that encodes its hint) on ``device`` when ComfyUI samples."""
    for control in controlnets(conditionings):
        patcher = getattr(control, "control_model_wrapped", None)   # ControlNet; ControlLora builds its own
        if patcher is not None:
            control.load_device = patcher.load_device = device
        if control.vae is not None:
            control.vae.device = control.vae.patcher.load_device = device
