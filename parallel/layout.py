"""One owner of the parallel layout: every rank coordinate and every process group comes from one rank grid.

Ranks form the grid [dp][cfg][ring][ulysses], the Ulysses coordinate varying fastest, and the group start places
ranks host by host, so consecutive ranks share a host. Hence:

- a **Ulysses** group is ``ulysses_degree`` consecutive ranks: its all-to-all, which moves every token of q, k, v
  and the output at once and waits for all of it, stays on the nearest links (one NVLink island or host);
- a **Ring** group takes every ``ulysses_degree``-th rank of a sequence block: its point-to-point transfers hide
  behind attention compute and tolerate the farther link;
- the **sequence** group is one [ring][ulysses] block (the ranks that hold slices of one sequence);
- a **CFG** pair is the same sequence coordinate in the two branches, ``sequence_degree`` ranks apart;
- a **data-parallel replica** is one [cfg][ring][ulysses] block; its first rank returns its rows of the latent;
- the **host** group is the ranks on one host, which share a page cache and read each file once between them.

``build`` creates every group once, when a worker joins, in the same order on every rank (torch.distributed needs
every rank to create every group, its own or not); a degree of 1 has no group (None).
"""
from dataclasses import dataclass

import torch.distributed as dist

from .degrees import GroupConfig


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

    @property
    def leads_replica(self) -> bool:
        """The replica's first rank returns its rows of the latent (the others hold the same rows)."""
        return self.at.branch == self.at.ring == self.at.ulysses == 0

    def describe(self) -> str:
        c = self.config
        return (f"{c.world_size} ranks = data parallel {c.dp_degree} × CFG {c.cfg_degree} × Ring {c.ring_degree} × "
                f"Ulysses {c.ulysses_degree}")


def _new_group(ranks: list[int]) -> dist.ProcessGroup:
    return dist.group.WORLD if len(ranks) == dist.get_world_size() else dist.new_group(ranks)


def _mine(rank: int, rank_lists_of_kind: list[list[int]]) -> dist.ProcessGroup | None:
    mine = None
    for ranks in rank_lists_of_kind:
        group = _new_group(ranks)
        if rank in ranks:
            mine = group
    return mine


def build(config: GroupConfig, rank: int, host: str) -> Layout:
    """This rank's layout, every group of the grid created (collective: every rank calls it with its host's IP)."""
    groups = {kind: _mine(rank, lists) for kind, lists in rank_lists(config).items()}
    sequence = groups["sequence"]
    ulysses = groups["ulysses"] or (sequence if config.ring_degree == 1 else None)
    ring = groups["ring"] or (sequence if config.ulysses_degree == 1 else None)
    return Layout(config, rank, coordinates(config, rank), sequence, ulysses, ring, groups["cfg"],
                  _host_group(host, rank))


def _host_group(host: str, rank: int) -> dist.ProcessGroup:
    hosts: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(hosts, host)
    if len(set(hosts)) == 1:
        return dist.group.WORLD
    mine = None
    for name in sorted(set(hosts)):
        group = dist.new_group([r for r, h in enumerate(hosts) if h == name])
        if name == host:
            mine = group
    return mine
