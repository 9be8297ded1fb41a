"""The child process that holds Tandem's Ray driver (see ``workers.driver``): it runs ``workers.group`` for ComfyUI's
nodes, and stops its Ray head when ComfyUI goes away.

Only the standard library is imported at module level: ``serve`` chooses ComfyUI's CPU mode before anything imports
``comfy.model_management``, so the driver opens no CUDA context of its own on a GPU the workers need.
"""
import logging
import os
import pickle
import queue
import signal
import threading
import time
from multiprocessing.connection import Connection

EXIT_GRACE_S = 5.0      # after ComfyUI went away, a call still running this long (a load) is ended by SIGTERM


def send(connection: Connection, message: tuple) -> None:
    """Messages are pickled here, not by ``multiprocessing``'s pickler, which would pass CPU tensors as shared
    memory handles: previews and latents travel by value."""
    connection.send_bytes(pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))


def receive(connection: Connection) -> tuple:
    return pickle.loads(connection.recv_bytes())


class _Forward(logging.Handler):
    """Tandem's log lines go to ComfyUI's log through the host, which prints them as its own."""

    def __init__(self, reply):
        super().__init__(logging.INFO)
        self.reply = reply

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.reply(("log", (record.levelno, record.getMessage())))
        except OSError:
            pass


class _Calls:
    """What ComfyUI's nodes ask of the driver. The host holds no Ray handle: a group travels as a key, valid while
    that group is the one running."""

    def __init__(self, groups, reply):
        self.groups, self.reply = groups, reply
        self.current, self.key = None, 0

    def start(self, config):
        """The group's key, workers and host; with where its start's seconds went if it is new (else {})."""
        group = self.groups.start(config)
        phases = {}
        if group is not self.current:
            self.current, self.key, phases = group, self.key + 1, group.phases
        return self.key, group.workers, group.on_this_host, phases

    def warm(self, workers: int | None) -> None:
        self.groups.warm(workers)

    def fingerprint(self, config) -> str:
        return self.groups.fingerprint(config)

    def shutdown(self) -> None:
        self.groups.shutdown()

    def call(self, key: int, method: str, args: tuple):
        return self._group(key).call(method, *args)

    def sample(self, key: int, job_key: tuple, job: bytes, previews: bool):
        on_step = (lambda *step: self.reply(("step", step))) if previews else None
        return self._group(key).sample(job_key, job, on_step=on_step)

    def _group(self, key: int):
        if key != self.key:
            raise self.groups.TandemError(self.groups.STOPPED)
        return self.current


def _read(connection: Connection, calls: queue.Queue, model_management) -> None:
    """Queue the host's calls; an interrupt (Cancel) is ComfyUI's flag here too, which ``Group.sample`` polls. When
    ComfyUI is gone (however it ended, its end of the pipe closed), stop a running job and let ``serve`` stop the
    head; a call that does not stop (a load) is ended by SIGTERM, which Ray's handler turns into a normal exit."""
    try:
        while True:
            message = receive(connection)
            if message[0] == "interrupt":
                model_management.interrupt_current_processing(True)
            else:
                calls.put(message[1:])
    except (EOFError, OSError):
        model_management.interrupt_current_processing(True)
        calls.put(None)
        timer = threading.Timer(EXIT_GRACE_S, os.kill, (os.getpid(), signal.SIGTERM))
        timer.daemon = True
        timer.start()


def _portable(error: Exception, groups) -> Exception:
    """The error as the host shows it: Tandem's errors and ComfyUI's Cancel as they are, any other (Ray's, whose text
    spans lines with the actor's description) in one line."""
    if isinstance(error, (groups.TandemError, groups.TandemConfigError)) or \
            type(error).__name__ == "InterruptProcessingException":
        return error
    return groups.TandemError(groups.one_line(error))


def serve(fd: int) -> None:
    """Answer the host's calls on ``fd`` in this (the main) thread, where ``ray.init`` can install Ray's SIGTERM
    handler, until the host closes its end; then stop the group and the head (Ray's own graceful shutdown: its
    agents see their raylet stop by SIGTERM and exit at once) and exit."""
    from .comfyui import import_comfyui

    import_comfyui(cpu=True)
    import comfy.model_management
    import psutil

    from . import group as groups

    os.set_inheritable(fd, False)            # Ray's processes must not hold the pipe open after this one ends
    connection, lock = Connection(fd), threading.Lock()

    def reply(message: tuple) -> None:
        with lock:
            send(connection, message)

    logger = logging.getLogger("tandem")
    logger.addHandler(_Forward(reply))
    logger.setLevel(logging.INFO)
    logger.propagate = False
    reply(("ready", time.time() - psutil.Process().create_time()))
    calls = queue.Queue()
    threading.Thread(target=_read, args=(connection, calls, comfy.model_management), daemon=True).start()
    handlers = _Calls(groups, reply)
    try:
        while (call := calls.get()) is not None:
            method, args = call
            comfy.model_management.interrupt_current_processing(False)
            try:
                answer = ("result", getattr(handlers, method)(*args))
            except Exception as e:
                answer = ("error", _portable(e, groups))
            try:
                reply(answer)
            except OSError:
                break
    finally:
        groups.shutdown()
        os._exit(0)        # not the seconds (measured: 3 to 5) Python takes to tear down torch's and ComfyUI's modules
