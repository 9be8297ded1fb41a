"""ControlNets reach the workers inside the conditioning, as ComfyUI's own objects, and run on the worker's device.

ControlNetApplyAdvanced stores a ``comfy.controlnet.ControlNet`` in the conditioning: its model with the weights,
the hint image, strength and step range, the ControlNet it was chained after, and, for latent ControlNets (InstantX
Flux / Qwen-Image), the VAE that encodes the hint. XFuser KSampler sends the conditioning like any other input:
pickled once into Ray's object store (with the positive and negative in one object, so they still share one
ControlNet and ComfyUI batches them together), and unpickled by every worker into a private host copy that ComfyUI's
model management in the worker loads onto the worker's GPU for the job and frees with the request.

This is the one place where weights travel through Ray, once per job: a ControlNet (typically 1 to 4 GB) is a
fraction of the DiT, and ComfyUI's ControlNet object does not record the file it was loaded from, so a worker could
not load it itself. Each job costs a serialization on the ComfyUI side, one object-store copy per host, and per
worker a host-RAM copy plus the GPU copy single-process ComfyUI also holds.

The devices in the object are those ComfyUI chose in its own process (its GPU, or the CPU for a CPU-only ComfyUI in
front of a GPU cluster), so each worker points the ControlNet's model and its hint VAE at its own device. Dtypes stay
the ones ComfyUI chose.
"""
from collections.abc import Iterator

import comfy.controlnet
import torch


def controlnets(conditionings: list[list]) -> Iterator[comfy.controlnet.ControlBase]:
    """Every ControlNet in these conditionings, the ones it was chained after included, each once."""
    seen = set()
    for conditioning in conditionings:
        for _, options in conditioning:
            control = options.get("control")
            while control is not None and id(control) not in seen:
                seen.add(id(control))
                yield control
                control = control.previous_controlnet


def place(conditionings: list[list], device: torch.device) -> None:
    """Load every ControlNet's model (and the VAE that encodes its hint) on ``device`` when ComfyUI samples."""
    for control in controlnets(conditionings):
        patcher = getattr(control, "control_model_wrapped", None)   # ControlNet; ControlLora builds its own
        if patcher is not None:
            control.load_device = patcher.load_device = device
        if control.vae is not None:
            control.vae.device = control.vae.patcher.load_device = device
