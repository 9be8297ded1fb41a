"""One owner of the parallel layout: every rank coordinate and every process group comes from one rank grid.

Ranks form the grid [dp][cfg][ring][ulysses], the Ulysses coordinate varying fastest, and the group start numbers
ranks host by host (``host_order``: Ray's node of each placement-group bundle, ComfyUI's node first), so consecutive
ranks share a host. Hence:

- a **Ulysses** group is ``ulysses_degree`` consecutive ranks: its all-to-all, which moves every token of q, k, v
  and the output at once and waits for all of it, stays on the nearest links (one NVLink island or host);
- a **Ring** group takes every ``ulysses_degree``-th rank of a sequence block: its point-to-point transfers hide
  behind attention compute and tolerate the farther link;
- the **sequence** group is one [ring][ulysses] block (the ranks that hold slices of one sequence);
- a **CFG** pair is the same sequence coordinate in the two branches, ``sequence_degree`` ranks apart;
- a **data-parallel replica** is one [cfg][ring][ulysses] block; its first rank returns its rows of the latent;
- the **host** group is the ranks on one host, which share a page cache and read each file once between them;
- the **FSDP mesh** shards over the ranks of a host and, with several hosts, replicates across them (HSDP): a
  block's all-gather stays inside the host, and inference sends nothing over the replicate dimension.

A host is a Ray node (its node id, not its IP: several raylets on one machine are several hosts to Ray's scheduler,
and a simulated cluster tests the multi-host layout on one machine). ``check_hosts`` refuses a placement that would
put one Ulysses group on two hosts.

``build`` creates every group once, when a worker joins, in the same order on every rank (torch.distributed needs
every rank to create every group, its own or not); a degree of 1 has no group (None).
"""
from dataclasses import dataclass

import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

from .degrees import GroupConfig, TandemConfigError


@dataclass(frozen=True)
class Coordinates:
    replica: int
    branch: int
    ring: int
    ulysses: int


def coordinates(config: GroupConfig, rank: int) -> Coordinates:
    u, r, c = config.ulysses_degree, config.ring_degree, config.cfg_degree
    return Coordinates(replica=rank // (u * r * c), branch=rank // (u * r) % c, ring=rank // u % r, ulysses=rank % u)


def rank_of(config: GroupConfig, at: Coordinates) -> int:
    u, r, c = config.ulysses_degree, config.ring_degree, config.cfg_degree
    return ((at.replica * c + at.branch) * r + at.ring) * u + at.ulysses


def rank_lists(config: GroupConfig) -> dict[str, list[list[int]]]:
    """Every group of each kind, as rank lists: what ``build`` creates, in creation order."""
    u, r, seq, world = config.ulysses_degree, config.ring_degree, config.sequence_degree, config.world_size
    blocks = [list(range(start, start + seq)) for start in range(0, world, seq)]
    lists = {
        "sequence": blocks if seq > 1 else [],
        "ulysses": [block[j * u:(j + 1) * u] for block in blocks for j in range(r)] if u > 1 and r > 1 else [],
        "ring": [block[i::u] for block in blocks for i in range(u)] if u > 1 and r > 1 else [],
        "cfg": [],
    }
    if config.cfg_degree > 1:
        for start in range(0, world, seq * 2):
            lists["cfg"] += [[start + offset, start + seq + offset] for offset in range(seq)]
    return lists


@dataclass
class Layout:
    config: GroupConfig
    rank: int
    at: Coordinates
    sequence: dist.ProcessGroup | None      # this rank's sequence block (Ulysses × Ring)
    ulysses: dist.ProcessGroup | None       # the ranks that trade heads (the sequence group without a ring)
    ring: dist.ProcessGroup | None          # the ranks that pass K/V around (the sequence group without Ulysses)
    cfg: dist.ProcessGroup | None           # this rank and its partner in the other CFG branch
    host: dist.ProcessGroup                 # the ranks on this rank's host
    hosts: list[str]                        # every rank's host, by rank
    mesh: DeviceMesh | None                 # FSDP's: (shard) on one host, (replicate, shard) over several

    @property
    def leads_replica(self) -> bool:
        """The replica's first rank returns its rows of the latent (the others hold the same rows)."""
        return self.at.branch == self.at.ring == self.at.ulysses == 0

    def describe(self) -> str:
        c = self.config
        text = (f"{c.world_size} ranks = data parallel {c.dp_degree} × CFG {c.cfg_degree} × Ring {c.ring_degree} × "
                f"Ulysses {c.ulysses_degree}")
        if self.mesh is not None and self.mesh.ndim == 2:
            text += f", FSDP sharded over the {self.mesh.size(1)} ranks of a host, replicated over {self.mesh.size(0)} hosts"
        elif self.mesh is not None:
            text += f", FSDP sharded over all {self.mesh.size()} ranks" + (
                " (the hosts hold unequal numbers of ranks, so no HSDP)" if len(set(self.hosts)) > 1 else "")
        return f"{text}; {placement(self.hosts)}"


def _spans(ranks: list[int]) -> str:
    return f"rank {ranks[0]}" if len(ranks) == 1 else f"ranks {ranks[0]}–{ranks[-1]}"


def by_host(hosts: list[str]) -> dict[str, list[int]]:
    """Each host's ranks, hosts in rank order."""
    ranks: dict[str, list[int]] = {}
    for rank, host in enumerate(hosts):
        ranks.setdefault(host, []).append(rank)
    return ranks


def placement(hosts: list[str]) -> str:
    """Which ranks run on which host, e.g. "10.0.0.5 (node 3f2a1b): ranks 0–3, 10.0.0.6 (node 9c0d4e): ranks 4–7"."""
    return ", ".join(f"{host}: {_spans(ranks)}" for host, ranks in by_host(hosts).items())


def host_order(nodes: list[str], first: str) -> list[int]:
    """The placement-group bundles in rank order, given each bundle's node: ``first`` (ComfyUI's node, where rank 0
    hands results over through shared memory) first, then the others in the order their first bundle comes, each
    node's bundles together (the vLLM way: ranks sorted by node, so consecutive ranks share a host)."""
    position = {node: i for i, node in reversed(list(enumerate(nodes)))}     # each node's first bundle
    position[first] = -1
    return sorted(range(len(nodes)), key=lambda i: (position[nodes[i]], i))


def check_hosts(config: GroupConfig, hosts: list[str]) -> None:
    """Refuse a placement that puts one Ulysses group (``ulysses_degree`` consecutive ranks) on two hosts: its
    all-to-all would cross the slowest link at every attention call. Ring, CFG and data-parallel groups may span
    hosts. With ranks sorted host by host this means every host must hold a multiple of the Ulysses degree."""
    u = config.ulysses_degree
    for start in range(0, len(hosts), u):
        if len(set(hosts[start:start + u])) > 1:
            counts = ", ".join(f"{len(ranks)} on {host}" for host, ranks in by_host(hosts).items())
            raise TandemConfigError(
                f"Ulysses degree {u} would split the Ulysses group of ranks {start}–{start + u - 1} over two hosts "
                f"(Ray placed {counts}): give every host a multiple of {u} GPUs (GPU count, or the GPUs each host "
                f"offers Ray), or lower the Ulysses degree (add Ring degree instead)")


def _new_group(ranks: list[int]) -> dist.ProcessGroup:
    return dist.group.WORLD if len(ranks) == dist.get_world_size() else dist.new_group(ranks)


def _mine(rank: int, rank_lists_of_kind: list[list[int]]) -> dist.ProcessGroup | None:
    mine = None
    for ranks in rank_lists_of_kind:
        group = _new_group(ranks)
        if rank in ranks:
            mine = group
    return mine


def build(config: GroupConfig, rank: int, hosts: list[str], device_type: str) -> Layout:
    """This rank's layout, every group of the grid created (collective: every rank calls it with the same ``hosts``,
    every rank's host in rank order, as the group start placed them)."""
    groups = {kind: _mine(rank, lists) for kind, lists in rank_lists(config).items()}
    sequence = groups["sequence"]
    ulysses = groups["ulysses"] or (sequence if config.ring_degree == 1 else None)
    ring = groups["ring"] or (sequence if config.ulysses_degree == 1 else None)
    host = _mine(rank, list(by_host(hosts).values())) if len(set(hosts)) > 1 else dist.group.WORLD
    return Layout(config, rank, coordinates(config, rank), sequence, ulysses, ring, groups["cfg"], host, hosts,
                  fsdp_mesh(hosts, device_type) if config.fsdp else None)


def fsdp_mesh(hosts: list[str], device_type: str) -> DeviceMesh:
    """FSDP's mesh: shard over all ranks on one host; over several, shard within each host and replicate across
    hosts (HSDP, a 2-D (replicate, shard) mesh whose rows are the hosts), so a block's all-gather never leaves the
    host. Hosts holding unequal numbers of ranks cannot form that grid: they shard over every rank (slower)."""
    per_host = [len(ranks) for ranks in by_host(hosts).values()]
    if len(per_host) > 1 and len(set(per_host)) == 1:
        return init_device_mesh(device_type, (len(per_host), per_host[0]), mesh_dim_names=("replicate", "shard"))
    return init_device_mesh(device_type, (len(hosts),), mesh_dim_names=("shard",))
