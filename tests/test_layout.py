"""The rank grid every group comes from (``parallel/layout``): checked on its rank lists, without processes."""
import itertools

import pytest

from tandem.parallel.degrees import GroupConfig
from tandem.tests import fault_table
from tandem.parallel.layout import Coordinates, coordinates, rank_lists, rank_of

CONFIGS = [GroupConfig(gpu_count=n, ulysses_degree=u, ring_degree=r, cfg_degree=c)
           for n, u, r, c in [(2, 2, 1, 1), (4, 2, 2, 1), (8, 2, 2, 2), (8, 4, 1, 2), (8, 1, 2, 1), (16, 2, 2, 2),
                              (4, 1, 1, 2), (6, 3, 1, 1)]]


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c.gpu_count}=dp{c.dp_degree}xcfg{c.cfg_degree}"
                                                          f"xr{c.ring_degree}xu{c.ulysses_degree}")
def test_every_group_comes_from_one_grid(config):
    world, u, r = config.world_size, config.ulysses_degree, config.ring_degree
    at = [coordinates(config, rank) for rank in range(world)]
    assert [rank_of(config, c) for c in at] == list(range(world))          # a bijection
    assert set(at) == {Coordinates(*c) for c in itertools.product(
        range(config.dp_degree), range(config.cfg_degree), range(r), range(u))}
    lists = rank_lists(config)
    ulysses = lists["ulysses"] or (lists["sequence"] if r == 1 else [])
    ring = lists["ring"] or (lists["sequence"] if u == 1 else [])
    for group in ulysses:              # consecutive ranks (one host's nearest links), one ring coordinate
        assert group == list(range(group[0], group[0] + u)) and len({at[g].ring for g in group}) == 1
    for group in ring:                 # every u-th rank of one sequence block, one Ulysses coordinate
        assert group == list(range(group[0], group[0] + u * r, u)) and len({at[g].ulysses for g in group}) == 1
    for pair in lists["cfg"]:          # the same sequence coordinate in the two branches of one replica
        a, b = (at[g] for g in pair)
        assert (a.replica, a.ring, a.ulysses) == (b.replica, b.ring, b.ulysses) and {a.branch, b.branch} == {0, 1}
    for kind, groups in lists.items():     # each kind covers every rank once (when it exists)
        assert not groups or sorted(itertools.chain(*groups)) == list(range(world)), kind


def test_ranks_go_host_by_host_comfyuis_host_first():
    """Bundles as Ray placed them (node of each); ranks take them node by node, the driver's node first."""
    from tandem.parallel.layout import host_order

    assert host_order(["b", "a", "b", "a"], first="a") == [1, 3, 0, 2]
    assert host_order(["b", "c", "b", "c"], first="a") == [0, 2, 1, 3]    # the driver's node holds no worker
    assert host_order(["a", "a"], first="a") == [0, 1]


@pytest.mark.parametrize("hosts, ulysses, ok", [
    (["a", "a", "b", "b"], 2, True),            # 2 + 2, Ulysses 2 × Ring 2: each Ulysses pair on one host
    (["a", "a", "a", "b"], 1, True),            # 3 + 1 without Ulysses: ring / data-parallel groups may span hosts
    (["a", "a", "a", "b"], 2, False),           # 3 + 1, Ulysses 2: ranks 2–3 would span the two hosts
    (["a"] * 6 + ["b"] * 2, 4, False),          # 6 + 2, Ulysses 4: ranks 4–7 span
    (["a"] * 4 + ["b"] * 4, 4, True),
])
def test_a_ulysses_group_never_spans_hosts(hosts, ulysses, ok):
    from tandem.parallel.degrees import TandemConfigError
    from tandem.parallel.layout import check_hosts

    config = GroupConfig(gpu_count=len(hosts), ulysses_degree=ulysses, ring_degree=len(hosts) // ulysses)
    if ok:
        check_hosts(config, hosts)
        return
    with pytest.raises(TandemConfigError) as refused:
        check_hosts(config, hosts)
    message = str(refused.value)
    print(message)
    assert "\n" not in message and f"multiple of {ulysses} GPUs" in message and "lower the Ulysses degree" in message
    fault_table.check("would split over two hosts", message)
