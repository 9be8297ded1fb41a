"""Ray's driver in a child process of ComfyUI, so that a dead Ray head cannot take ComfyUI down.

Ray's core worker ends the process it lives in when its raylet or GCS dies: with the driver inside ComfyUI, a killed
raylet ended ComfyUI within 6 to 14 s ("The connection to the plasma store is failed. Terminate the process"), a
killed GCS after 60 s ("Failed to connect to GCS within 60 seconds ... The program will terminate"). ComfyUI's
nodes therefore reach ``workers.group`` (the head, the placement group, the actors, the polling) through a child
process (``workers.driver_child``), one per Ray connection. When it dies, the call fails in one line, what is left
of its head is killed, and the next Tandem Init starts a new child and head. The child stops its head (Ray's own
graceful shutdown) when ComfyUI goes away, however ComfyUI ends: before, Ray's agents outlived ComfyUI by 60 s,
trying to tell the GCS, killed with ComfyUI, that their raylet had died.

Tests and benchmarks that call ``workers.group`` directly run the driver in their own process, as before. A job's
large tensors still go through shared files (``workers.transport``); the pipe carries the pickled job, each step's
previews and the results.
"""
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Pipe
from pathlib import Path

import comfy.model_management
import torch

from ..parallel.degrees import GroupConfig, TandemError
from . import group as groups
from . import transport
from .comfyui import comfyui_path
from .driver_child import receive, send

log = logging.getLogger("tandem")

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
POLL_S = 0.2
STOP_S = 30.0            # Tandem Shutdown waits this long for the child to stop its head
GCS_TIMEOUT_S = 10       # a private head has no GCS fault tolerance: a GCS silent this long is dead (Ray waits 60 s)
BOOTSTRAP = ("import importlib.util, sys; root = sys.argv[1]; spec = importlib.util.spec_from_file_location("
             "'tandem', root + '/__init__.py', submodule_search_locations=[root]); "
             "sys.modules['tandem'] = importlib.util.module_from_spec(spec); "
             "from tandem.workers.driver_child import serve; serve(int(sys.argv[2]))")


class Driver:
    """One child process holding one Ray connection (a private head, or a cluster) and its groups. The child leads a
    session of its own: Ctrl-C in ComfyUI's terminal reaches ComfyUI only, and what is left of a dead child's head
    can be killed as one process group."""

    def __init__(self, address: str):
        ours, theirs = Pipe()
        env = dict(os.environ, COMFYUI_PATH=comfyui_path())
        if address == "local":
            env.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(GCS_TIMEOUT_S))
        self.process = subprocess.Popen([sys.executable, "-c", BOOTSTRAP, str(PACKAGE_ROOT), str(theirs.fileno())],
                                        pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                                        start_new_session=True)
        theirs.close()
        self.address, self.connection = address, ours
        self.spawned = time.monotonic()
        self.startup_s: float | None = None    # the child's start (interpreter, imports), as it measured it
        self.ended: str | None = None          # why calls are refused, once the child stopped or died
        self.answered = False                  # a child that dies before its first answer could not start
        self.lock = threading.Lock()

    def request(self, method: str, *args, on_step: Callable | None = None, interruptible: bool = False):
        """The child's answer to one call; its errors raised here. While it runs, Tandem's log lines are logged here,
        ``on_step`` gets each step's previews, and with ``interruptible`` ComfyUI's Cancel reaches the child."""
        with self.lock:
            if self.ended:
                raise TandemError(self.ended)
            try:
                return self._exchange(method, args, on_step, interruptible)
            except (EOFError, OSError):
                self._lose()
                raise TandemError(self.ended) from None

    def _exchange(self, method: str, args: tuple, on_step: Callable | None, interruptible: bool):
        send(self.connection, ("call", method, args))
        raised, interrupted = None, False
        while True:
            if not self.connection.poll(POLL_S):
                if interruptible and not interrupted and comfy.model_management.processing_interrupted():
                    send(self.connection, ("interrupt",))
                    interrupted = True
                continue
            kind, value = receive(self.connection)
            if kind == "ready":
                self.startup_s = value
            elif kind == "log":
                log.log(*value)
            elif kind == "step" and raised is None:
                try:
                    on_step(*value)
                except BaseException as e:    # ComfyUI's callback raised (Cancel): the workers stop, then we raise
                    raised = e
                    if not interrupted:
                        send(self.connection, ("interrupt",))
                        interrupted = True
            elif kind in ("result", "error"):
                self.answered = True
                if raised is not None:
                    raise raised
                if kind == "error":
                    raise value
                return value

    def _lose(self) -> None:
        """The child died (Ray ended it with its raylet or GCS): kill what is left of its head, whose agents would
        wait 60 s on the dead GCS, and refuse further calls."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait()
        status = self.process.returncode
        self.ended = (f"Tandem's Ray driver stopped (exit status {status}): its Ray head died (raylet or GCS); run "
                      "the prompt again to start a new one" if self.answered else
                      f"Tandem's Ray driver process could not start (exit status {status}): its error is in "
                      "ComfyUI's log above")

    def close(self) -> None:
        """Stop the groups and the head (Ray's graceful shutdown, in the child), then the child."""
        try:
            self.request("shutdown")
        except TandemError:
            return                                    # it had died already: _lose cleaned up
        self.connection.close()
        try:
            self.process.wait(STOP_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.ended = groups.STOPPED


class RemoteGroup:
    """Tandem Init's TANDEM_GROUP in ComfyUI: a group living in the driver process, with the calls the loader and the
    sampler make of ``workers.group.Group``."""

    def __init__(self, driver: Driver, key: int, config: GroupConfig, workers: list[dict], on_this_host: bool):
        self.driver, self.key, self.config = driver, key, config
        self.workers, self.on_this_host = workers, on_this_host

    def call(self, method: str, *args) -> list:
        return self.driver.request("call", self.key, method, args)

    def sample(self, key: tuple, job: bytes, on_step: Callable | None = None) -> list:
        return self.driver.request("sample", self.key, key, job, on_step is not None, on_step=on_step,
                                   interruptible=True)


_driver: Driver | None = None
_generation = 0          # bumped when a driver ends, so that Tandem Init's fingerprint changes with it


def _driver_for(address: str) -> Driver:
    """The running driver if it lives and holds this Ray connection, else a new one."""
    global _driver
    if _driver is not None and (_driver.ended or _driver.address != address):
        _end()
    if _driver is None:
        _driver = Driver(address)
    return _driver


def _end() -> None:
    global _driver, _generation
    if _driver is not None:
        _driver.close()
        _driver = None
        _generation += 1


def start(config: GroupConfig) -> RemoteGroup:
    """Tandem Init: settings that cannot work fail here, before any process starts."""
    groups.check(config)
    began = time.monotonic()
    driver = _driver_for(config.ray_address)
    key, workers, on_this_host, phases = driver.request("start", config)
    if phases:
        log.info("Tandem Init: %s", started(time.monotonic() - began,
                                            driver.startup_s if driver.spawned >= began else None, phases))
    return RemoteGroup(driver, key, config, workers, on_this_host)


def started(total_s: float, driver_s: float | None, phases: dict[str, float]) -> str:
    """Where a group start's seconds went, in one line: the driver process's own start (when this start paid for it),
    then each phase of ``workers.group.Group``."""
    parts = ([f"driver process {driver_s:.1f} s"] if driver_s is not None else []) + [
        f"{name} {seconds:.1f} s" for name, seconds in phases.items()]
    return f"group started in {total_s:.1f} s ({', '.join(parts)})"


def fingerprint(config: GroupConfig) -> str:
    """Tandem Init's IS_CHANGED: the group's own (``workers.group.fingerprint``), asked of the driver while it lives.
    Without one, this process's ``workers.group`` (which never holds a group here) answers as a new driver will, so
    the prompt that starts it is reused by the next; a lost driver moves the generation on, so Tandem Init runs
    again."""
    if _driver is not None:
        try:
            return f"{_driver.request('fingerprint', config)}@{_generation}"
        except TandemError:
            _end()
    return f"{groups.fingerprint(config)}@{_generation}"


def prestart() -> None:
    """When ComfyUI loads Tandem on a machine with GPUs: start the driver process, its private Ray head and one worker
    per GPU in the background, so that the first Tandem Init finds them running (they cost ~13, ~4 and ~11 s on an
    H200 machine, see BENCHMARKS.md's start-up section). Until a group takes them, each started worker holds its GPU's
    CUDA context (~0.5 GB). ``TANDEM_PRESTART=0`` turns this off; a number N starts N workers (CPU workers on a
    machine without GPUs). A Tandem Init with a cluster address or other workers replaces what was started."""
    setting = os.environ.get("TANDEM_PRESTART", "auto")
    if setting == "0" or (not setting.isdigit() and not torch.cuda.is_available()):
        return
    driver = _driver_for("local")
    threading.Thread(target=_warm, args=(driver, int(setting) if setting.isdigit() else None),
                     name="tandem-prestart", daemon=True).start()


def _warm(driver: Driver, workers: int | None) -> None:
    try:
        driver.request("warm", workers)
    except TandemError as e:
        log.warning("Tandem: could not start its Ray head and workers in the background (%s); Tandem Init will try "
                    "again", e)


def shutdown() -> None:
    """Tandem Shutdown: stop the driver, its groups and the Ray head it started, and remove the job files."""
    _end()
    transport.clear()
