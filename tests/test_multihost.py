"""One Tandem group over two hosts, simulated on one machine: a Ray cluster of two raylets (``ray.cluster_utils``),
2 CPUs each, Tandem connecting with the cluster's address as Tandem Init would with a real one.

Two raylets are two hosts to Ray (two node ids) and to Tandem, which tells hosts apart by node id: ranks go host by
host, each host reads the file once, FSDP shards within a host and replicates across them (HSDP). What the
simulation cannot show is a slower link between the hosts, and a file present on one host only: each raylet, and
every worker it starts, keeps the working directory it was started in, so ``/proc/self/cwd/<file>`` is a path that
exists on one simulated host and not on the other.

The cluster starts once for the module (several raylets on two cores take a while). Tandem connects with the
cluster's address; not with ``auto``, which takes the Ray cluster started last on this machine, maybe another user's.
"""
import logging
import os
import re

import pytest
import torch

from tandem.parallel.degrees import GroupConfig, TandemConfigError
from tandem.tests import fault_table
from tandem.tests.checkpoints import build_model
from tandem.tests.test_wan_usp import ksampler, relative, request, single_process, tandem_sample
from tandem.workers import group as groups

SHAPE = (3, 6, 10)      # 45 tokens: odd, so the sequence split pads


@pytest.fixture(scope="module")
def cluster(_tandem_session, tmp_path_factory):
    """A head and a second node, 2 CPUs each (and a resource naming each), started with their own working directory:
    {host resource name: that directory}, and the cluster's address."""
    from ray.cluster_utils import Cluster

    groups.shutdown()                       # a private head an earlier test module left running
    directories = {name: tmp_path_factory.mktemp(name) for name in ("host_a", "host_b")}
    here, cluster = os.getcwd(), Cluster()
    try:
        for name, directory in directories.items():
            os.chdir(directory)
            cluster.add_node(num_cpus=2, resources={name: 2}, include_dashboard=False)
    finally:
        os.chdir(here)
    yield cluster.address, directories
    groups.shutdown()
    cluster.shutdown()


def config(address: str, **degrees) -> GroupConfig:
    return GroupConfig(gpu_count=4, ray_address=address, timeout_s=120, **degrees)


def node_of_rank(group) -> list[str]:
    """Each rank's node id, as the worker itself reports it."""
    return [info["node"] for info in sorted(group.workers, key=lambda info: info["rank"])]


def read_per_host(group, infos: list[dict]) -> dict[str, int]:
    """Bytes of the file the ranks of each host read (full tensors for the host, and their own FSDP shards)."""
    per_host: dict[str, int] = {}
    for node, info in zip(node_of_rank(group), infos):
        per_host[node] = per_host.get(node, 0) + (info["read_bytes"] or 0) + info["shard_bytes"]
    return per_host


def tensor_bytes(family: str) -> int:
    return sum(t.numel() * t.element_size() for t in build_model(family).model.diffusion_model.state_dict().values())


def test_ulysses2_ring2_over_two_hosts(cluster, checkpoint, caplog):
    """Ulysses 2 × Ring 2 on 2 + 2 workers: each Ulysses pair on one host (the ring spans them), each host reads the
    file once, the layout is logged once, and the sample equals single-process ComfyUI."""
    address, _ = cluster
    path = str(checkpoint("wan21_t2v"))
    req = request("wan21_t2v", SHAPE, "euler")
    expected = single_process(path, "wan21_t2v", req)

    with caplog.at_level(logging.INFO, logger="tandem"):
        group = groups.start(config(address, ulysses_degree=2, ring_degree=2))
    nodes = node_of_rank(group)
    assert nodes[0] == nodes[1] != nodes[2] == nodes[3]                     # Ulysses groups [0, 1], [2, 3]
    assert group.hosts == [groups.host_name(node) for node in nodes]        # the driver placed them where they run
    lines = [r.getMessage() for r in caplog.records if "ranks =" in r.getMessage()]
    print(lines)
    assert len(lines) == 1 and re.search(r"Ulysses 2; \S+ \(node \w+\): ranks 0–1, \S+ \(node \w+\): ranks 2–3$",
                                         lines[0])

    infos = group.call("load", path, "default", None, "striped")
    latent, _ = tandem_sample(group, path, req, fanout="striped")
    error = relative(latent, expected)
    per_host = read_per_host(group, infos)
    print(f"Ulysses 2 × Ring 2 over two hosts: relative error {error:.2e}, bytes read per host {per_host}, "
          f"per rank {[i['read_bytes'] for i in infos]}")
    assert latent.shape == expected.shape and error < 1e-4
    assert list(per_host.values()) == [tensor_bytes("wan21_t2v")] * 2        # once per host, split over its ranks
    assert all(i["read_bytes"] > 0 for i in infos)


def test_hsdp_over_two_hosts(cluster, checkpoint, tmp_path):
    """FSDP on 2 + 2 workers is HSDP: each rank holds half the weights (sharded over its host's 2 ranks, replicated
    across the hosts), each host reads the file once, and the sample equals single-process ComfyUI, also with a
    LoRA (its factors reach the workers through Ray's object store, as every large tensor of a job does when some
    workers are on another host, and each rank patches its own shards)."""
    from tandem.nodes.loader import load as load_model
    from tandem.tests.test_lora import comfyui_sample, make_lora, with_loras

    address, _ = cluster
    path = str(checkpoint("wan21_t2v"))
    req = request("wan21_t2v", SHAPE, "dpmpp_2m")
    expected = single_process(path, "wan21_t2v", req)

    group = groups.start(config(address, ulysses_degree=1, fsdp=True))
    assert "FSDP sharded over the 2 ranks of a host, replicated over 2 hosts" in group.workers[0]["layout"]
    infos = group.call("load", path, "default", None, "striped")
    latent, _ = tandem_sample(group, path, req, fanout="striped")
    error = relative(latent, expected)
    total = sum(p.numel() for p in build_model("wan21_t2v").model.diffusion_model.parameters())
    per_host = read_per_host(group, infos)
    print(f"HSDP 2 × 2: relative error {error:.2e}, local parameters {[i['local_params'] for i in infos]} of "
          f"{total}, bytes read per host {per_host}")
    assert latent.shape == expected.shape and error < 1e-4
    for info in infos:
        assert 0.45 * total <= info["local_params"] <= 0.55 * total
    assert list(per_host.values()) == [tensor_bytes("wan21_t2v")] * 2

    assert not group.on_this_host                     # so the job's large tensors go through Ray's object store
    lora = ((str(make_lora("wan21_t2v", tmp_path / "lora.safetensors", 1, rank=64)), 0.8),)   # factors ≥ 64 KiB
    plain, expected = expected, comfyui_sample(path, "wan21_t2v", lora, req)
    assert relative(expected, plain) > 0.05           # the LoRA changes the result
    error = relative(ksampler(with_loras(load_model(group, path, fanout="striped"), lora), req), expected)
    print(f"HSDP 2 × 2 with a LoRA: relative error {error:.2e}")
    assert error < 1e-4


def test_a_file_missing_on_one_host_is_one_line(cluster, checkpoint):
    """A model file that only the first host has: every rank refuses it in one line naming the other host and the
    path, and the group keeps working."""
    address, directories = cluster
    (directories["host_a"] / "wan.safetensors").symlink_to(checkpoint("wan21_t2v"))
    path = "/proc/self/cwd/wan.safetensors"          # the file on host_a's workers, nothing on host_b's
    group = groups.start(config(address, ulysses_degree=1, fsdp=True))
    import ray

    host_b = next(groups.host_name(n["NodeID"]) for n in ray.nodes() if n["Alive"] and "host_b" in n["Resources"])
    with pytest.raises(TandemConfigError) as refused:
        group.call("load", path, "default")
    message = str(refused.value)
    print(message)
    assert "\n" not in message and path in message and f"on host {host_b}: No such file" in message
    assert message.count("on host") == 1
    fault_table.check("missing or unreadable on one host", message)
    assert group.call("load", str(checkpoint("wan21_t2v")), "default")      # the group still loads and runs


def test_ray_client_address_is_refused():
    """Ray Client (ray://) in one line, before anything starts: Tandem's driver must be a node of the cluster."""
    with pytest.raises(TandemConfigError) as refused:
        groups.check(GroupConfig(ray_address="ray://10.0.0.5:10001"))
    fault_table.check("Ray Client address", str(refused.value))
