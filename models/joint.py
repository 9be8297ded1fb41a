"""Joint text-image attention under sequence parallelism, shared by the families built like Flux (MMDiT-style
double/single blocks: Flux, Qwen-Image, HunyuanVideo, ...).

The image tokens are split right after the patch embedding (``split_tokens``), the text tokens stay replicated on
every rank, each block's joint attention runs through joint Ulysses (``joint_block``: the text sits first or last in
the attention call, as the model concatenates it), the RoPE ids are split alike (``split_ids``), and the final layer's
output is gathered (``gather_tokens``). ControlNet residuals that a model adds to a prefix of the image tokens reach
it as this rank's part (``LocalControl``): the ControlNet itself runs on the full input on every rank.
"""
from functools import partial

import torch

from ..parallel.attention import joint_ulysses_override, with_override
from ..parallel.sequence import SequenceShard
from ..parallel.ulysses import AttentionFn

class LocalControl:
    """Hands the model a ControlNet dict of its own whose residuals are this rank's slices.

    The slices need the forward's token count, known only once ``img_in`` has run (Kontext / Edit references add
    tokens), so the model's pre-hook gives it empty lists that the ``img_in`` hook fills: Flux and Qwen-Image read
    ``control`` only after ``img_in``. ComfyUI's dict and tensors are never changed (slices are views, and the model
    adds them to its own tokens), and nothing is kept past ``img_in``, so the residuals are freed with the forward.
    """

    def __init__(self, shard: SequenceShard, keys: tuple[str, ...], whole: bool = False):
        self.shard, self.keys = shard, keys
        self.whole = whole     # residuals cover every image token (``img += add``): padded slices, as the tokens
        self.pending: tuple[dict, dict] | None = None     # (ComfyUI's dict, the model's) between take and fill

    def take(self, module, args, kwargs):
        """Diffusion model pre-hook: swap ``kwargs["control"]`` for a new dict, filled by ``fill``."""
        self.pending = None
        control = kwargs.get("control")
        if control is None:
            return None
        local = {key: ([] if key in self.keys else value) for key, value in control.items()}
        self.pending = (control, local)
        return args, {**kwargs, "control": local}

    def fill(self, module, args, out) -> None:
        """``img_in`` hook, after ``split_tokens``: each residual becomes this rank's part of its prefix."""
        if self.pending is None:
            return
        (full, local), self.pending = self.pending, None
        part = self.shard.split if self.whole else self.shard.split_prefix
        for key in local.keys() & set(self.keys):
            local[key][:] = [None if add is None else part(add) for add in full[key]]


def split_tokens(shard: SequenceShard, module, args, out: torch.Tensor) -> torch.Tensor:
    """Patch embedding's output holds every image token: from here on each rank keeps its slice."""
    shard.total = out.shape[1]
    return shard.split(out)


def split_ids(shard: SequenceShard, text_first: bool, module, args):
    """Position ids of [text; image] (or [image; text]): keep all text ids and this rank's image ids."""
    ids = args[0]
    text = ids.shape[1] - shard.total
    if text_first:
        return (torch.cat((ids[:, :text], shard.split(ids[:, text:])), dim=1),)
    return (torch.cat((shard.split(ids[:, :shard.total]), ids[:, shard.total:]), dim=1),)


def joint_block(shard: SequenceShard, override, image: str | None, module, args, kwargs):
    """Route the block's joint attention through Ulysses; record the image tokens a block with an ``image`` stream
    argument runs on (single blocks hold [text; image] in one tensor)."""
    if image is not None:
        shard.seen_block_tokens.add(kwargs[image].shape[1])
    kwargs["transformer_options"] = with_override(kwargs.get("transformer_options", {}), override)
    return args, kwargs


def gather_tokens(shard: SequenceShard, module, args, out: torch.Tensor) -> torch.Tensor:
    return shard.gather(out)


def gather_after_text(shard: SequenceShard, module, args, out: torch.Tensor) -> torch.Tensor:
    """[replicated text; image slice] -> [text; every image token]: a per-token layer's output over the joint
    sequence (NextDiT, OmniGen2), gathered before the model's unpatchify."""
    text = out.shape[1] - shard.local
    return torch.cat((out[:, :text], shard.gather(out[:, text:])), dim=1)


def install_joint(diffusion_model, shard: SequenceShard, attend: AttentionFn, text_first: bool, begin,
                  after_split=None) -> None:
    """The hooks every Flux-built family (double + single blocks, ``img_in``, ``pe_embedder``, ``final_layer``) needs;
    ``begin`` runs first in each forward (to refuse or rewrite inputs the split would break), ``after_split`` right
    after the image tokens were split."""
    override = joint_ulysses_override(shard, attend, text_first)
    diffusion_model.register_forward_pre_hook(begin, with_kwargs=True)
    diffusion_model.img_in.register_forward_hook(partial(split_tokens, shard))
    if after_split is not None:
        diffusion_model.img_in.register_forward_hook(after_split)
    diffusion_model.pe_embedder.register_forward_pre_hook(partial(split_ids, shard, text_first))
    for block in diffusion_model.double_blocks:
        block.register_forward_pre_hook(partial(joint_block, shard, override, "img"), with_kwargs=True)
    for block in diffusion_model.single_blocks:
        block.register_forward_pre_hook(partial(joint_block, shard, override, None), with_kwargs=True)
    diffusion_model.final_layer.register_forward_hook(partial(gather_tokens, shard))
