"""Tandem Init and Tandem Shutdown: start, reuse and stop the worker group."""
from ..parallel.degrees import ATTENTION_BACKENDS, GroupConfig, TandemError
from ..workers import driver

CATEGORY = "Tandem"


class TandemInit:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "ray_address": ("STRING", {"default": "local", "tooltip":
                "'local' starts a private Ray head on this machine (dashboard off). For several machines, join this "
                "one to a Ray cluster (ray start) and give its head's address, e.g. 10.0.0.5:6379, or 'auto' for the "
                "cluster this machine joined. Ray Client (ray://) is refused."}),
            "gpu_count": ("INT", {"default": 2, "min": 1, "max": 256, "tooltip":
                "Workers to start, one per GPU. GPUs beyond CFG × Ulysses × Ring form data-parallel replicas that "
                "split the latent batch. Without GPUs, CPU workers on gloo (slow, for trying it out)."}),
            "ulysses_degree": ("INT", {"default": 2, "min": 1, "max": 256, "tooltip":
                "GPUs that split one video's tokens by exchanging attention heads; must divide the model's "
                "head count. Needs the full weights on each GPU."}),
            "ring_degree": ("INT", {"default": 1, "min": 1, "max": 256, "tooltip":
                "GPUs that split the tokens further by passing keys/values around a ring."}),
            "cfg_degree": ("INT", {"default": 1, "min": 1, "max": 2, "tooltip":
                "2 runs the positive and negative prompt on different GPUs (CFG > 1)."}),
            "fsdp": ("BOOLEAN", {"default": False, "tooltip":
                "Shard the weights over the GPUs (FSDP2) when one GPU cannot hold the whole model."}),
            "fsdp_cpu_offload": ("BOOLEAN", {"default": False, "tooltip":
                "Keep FSDP shards in host memory and stream them to the GPU block by block."}),
            "attention": (list(ATTENTION_BACKENDS), {"default": "sdpa", "tooltip":
                "Attention kernel each GPU runs; flash/sage fall back to SDPA with a warning if unavailable."}),
            "timeout_s": ("INT", {"default": 600, "min": 10, "max": 86400, "tooltip":
                "Seconds any collective or worker call may take before Tandem gives up and restarts the group."}),
        }}

    RETURN_TYPES = ("TANDEM_GROUP",)
    RETURN_NAMES = ("group",)
    FUNCTION = "start"
    CATEGORY = CATEGORY
    DESCRIPTION = "Starts (or reuses) one Ray worker per GPU, joined in one process group."

    @classmethod
    def IS_CHANGED(cls, **settings):
        return driver.fingerprint(GroupConfig(**settings))

    def start(self, **settings):
        return (driver.start(GroupConfig(**settings)),)


class TandemShutdown:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"group": ("TANDEM_GROUP",)}, "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"}}

    RETURN_TYPES = ()
    FUNCTION = "stop"
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    DESCRIPTION = ("Stops the Tandem workers (and the Ray head if Tandem started it), freeing the GPUs. Queue it in "
                   "a prompt of its own: ComfyUI does not order it after the nodes that use the group.")

    def stop(self, group, prompt: dict | None = None, unique_id: str | None = None):
        users = _other_users(prompt or {}, str(unique_id))
        if users:
            raise TandemError(f"Tandem Shutdown is in the same prompt as {', '.join(users)}, which use its group, "
                              "and could stop the workers under them: queue Tandem Shutdown in a prompt of its own")
        driver.shutdown()
        return ()


def _other_users(prompt: dict, shutdown_id: str) -> list[str]:
    """The other nodes of ``prompt`` fed by the Tandem Init that feeds this Tandem Shutdown."""
    link = prompt.get(shutdown_id, {}).get("inputs", {}).get("group")
    init_id = str(link[0]) if isinstance(link, list) else None
    return sorted(f"{node.get('class_type')} (node {node_id})" for node_id, node in prompt.items()
                  if node_id != shutdown_id and any(isinstance(value, list) and str(value[0]) == init_id
                                                    for value in node.get("inputs", {}).values()))
