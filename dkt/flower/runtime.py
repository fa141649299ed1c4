"""The SuperNode's Runtime API as DKT's agent worker uses it (client/agent_worker.py):
acquire a task, pull its message, context and run, push the reply and the task's outcome,
and send task heartbeats, through Flower's own functions (those of `flwr-clientapp` in
flwr/supernode/runtime/run_clientapp.py and of Flower's SuperExec). Flower is imported
inside the functions: the worker starts its SuperNode before it imports anything heavy."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, MutableMapping
from logging import ERROR, INFO, WARNING
from typing import Any

POLL_SECONDS = 0.1  # between AcquireTask calls while idle (Flower's SuperExec: 1 s)


class TaskAbandoned(BaseException):
    """The SuperNode no longer wants the task in hand (its run was stopped)."""


class TaskRunner:
    """Takes a SuperNode's tasks one after another and runs the ClientApp for each.

    `in_task` is set while a task runs; `abandoned` is set (and SIGINT raised in the main
    thread, whose handler raises TaskAbandoned) when the SuperNode's heartbeat answer says
    it no longer holds the task. `marks` gets the task's acquire and pull times."""

    def __init__(
        self,
        address: str,
        in_task: threading.Event,
        abandoned: threading.Event,
        marks: MutableMapping[str, float],
        superexec_secret: bytes | None = None,
    ) -> None:
        self.address = address
        self.superexec_secret = superexec_secret  # signs AcquireTask (the SuperNode checks)
        self.in_task = in_task
        self.abandoned = abandoned
        self.marks = marks

    def serve(self, app: Any) -> None:
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType

        client = _runtime_client(
            self.address, "SuperExec", token=None, superexec_secret=self.superexec_secret
        )
        request = AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP])
        while True:
            try:
                found = client.AcquireTask(request)
            except Exception as err:  # the SuperNode is starting or busy: ask again
                log(WARNING, f"AcquireTask failed ({type(err).__name__}: {err}); retrying")
                time.sleep(1.0)
                continue
            if found.HasField("task") and found.token:
                if app is None:
                    self._run_task_in_fresh_process(found.token)
                else:
                    self._run_task(found.token, app)
            else:
                time.sleep(POLL_SECONDS)

    def _run_task_in_fresh_process(self, token: str) -> None:
        """One task in a new process of the installed dkt (`python -m
        dkt.client.agent_worker --run-task`), which gets the task's token on its standard
        input and exits after it: a fresh process per message, as Flower's
        `flwr-clientapp`, but it runs only the installed DKT ClientApp, never code from
        the run's FAB."""
        import subprocess
        import sys

        from dkt.flower.processes import dying_with_parent

        cmd = [sys.executable, "-m", "dkt.client.agent_worker", "--run-task"]
        cmd += ["--runtime-api-address", self.address]
        log(INFO, "Start a fresh DKT ClientApp process")
        done = subprocess.run(dying_with_parent(cmd), input=token.encode(), check=False)
        if done.returncode != 0:
            log(ERROR, f"the fresh ClientApp process exited with code {done.returncode}")

    def run_task(self, token: str, app: Callable[..., Any]) -> None:
        """One task, then return (a fresh process's only task)."""
        self._run_task(token, app)

    def _run_task(self, token: str, app: Callable[..., Any]) -> None:
        """One task, as `flwr-clientapp` runs it (flwr/supernode/runtime/run_clientapp.py),
        without leaving the process afterwards."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.common.constant import ErrorCode, SubStatus
        from flwr.supercore.heartbeat import HeartbeatSender
        from flwr.supernode.runtime.run_clientapp import (
            pull_task_input,
            push_message,
            push_task_output,
        )

        acquired = time.time()
        client = _runtime_client(self.address, "flwr-clientapp", token=token)
        heartbeat = HeartbeatSender(self._heartbeat_fn(client))  # started once pulled
        message = context = reply = None
        status, details = SubStatus.FAILED, "the DKT agent worker failed for an unknown reason"
        self.in_task.set()
        try:
            heartbeat.start()
            message, context, run, fab = pull_task_input(client)
            check_app(run.fab_id, fab.content)
            self.marks.update(acquired=acquired, pulled=time.time())
            reply = app(message=message, context=context)
            status, details = SubStatus.COMPLETED, ""
        except TaskAbandoned:
            log(WARNING, "the SuperNode dropped the task in hand (its run stopped)")
            details = "task abandoned: the run stopped"
        except Exception as err:  # reported to the conductor as Flower reports it
            log(ERROR, f"ClientApp raised {type(err).__name__}: {err}", exc_info=err)
            reason = f"{type(err)}:<'{err}'>"
            details = reason
            if message is not None:
                reply = Message(
                    Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                    reply_to=message,
                )
        finally:
            self.in_task.clear()
            self.marks.clear()
            if reply is not None and context is not None:
                try:
                    push_message(client, reply, context)
                except Exception as err:
                    log(ERROR, f"could not push the reply: {err}")
            push_task_output(client, context, status, details)
            if heartbeat.is_running:
                heartbeat.stop()
            client.close()

    def _heartbeat_fn(self, client: Any) -> Callable[[], bool]:
        """Flower's task heartbeat, except that a task the SuperNode no longer wants
        ends that task, not this process."""
        import httpx
        from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest

        request = SendTaskHeartbeatRequest()
        main_thread = threading.main_thread().ident

        def beat() -> bool:
            try:
                reply = client.SendTaskHeartbeat(request)
            except httpx.TransportError:
                return False
            except httpx.HTTPStatusError:
                return False  # retried with backoff, as Flower does for 503/504
            if not reply.success and self.in_task.is_set() and not self.abandoned.is_set():
                self.abandoned.set()
                if main_thread is not None:
                    signal.pthread_kill(main_thread, signal.SIGINT)
            return True

        return beat


PYPROJECT = "pyproject.toml"
FAB_MANIFEST = ".info/CONTENT"  # Flower's list of a FAB's files: "path,sha256,bits" lines
_MAX_FAB_FILE_BYTES = 1 << 20  # a pyproject.toml or manifest beyond this is not DKT's


def check_app(fab_id: str, fab: bytes) -> None:
    """Refuse a task of any app but DKT's as the installed dkt builds it: this process
    runs only its own ClientApp, so the FAB must hold the very pyproject.toml that
    `runs.write_app` writes (compared as parsed TOML) and no file but Flower's manifest
    of it. The run config travels apart from the FAB, so one dkt version has one FAB."""
    import tomllib

    import tomli_w

    from dkt import __version__
    from dkt.flower.runs import APP_NAME, APP_PUBLISHER, CLIENTAPP, app_pyproject

    ours = f"{APP_PUBLISHER}/{APP_NAME}"
    files = _fab_files(fab)
    try:
        got = tomllib.loads(files[PYPROJECT].decode())
    except (KeyError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise ValueError(
            f"this DKT agent runs only the DKT app ({ours}); the run's app has no readable "
            f"{PYPROJECT} ({type(err).__name__})"
        ) from None
    clientapp = _entry(got, "tool", "flwr", "app", "components", "clientapp")
    if fab_id != ours or clientapp != CLIENTAPP:
        raise ValueError(
            f"this DKT agent runs only the DKT app ({ours}, {CLIENTAPP}); the "
            f"run's app is {fab_id} with ClientApp {clientapp}: start the SuperNode with "
            "`dkt agent --fresh-process` or plain flower-supernode for other apps"
        )
    extra = sorted(set(files) - {PYPROJECT, FAB_MANIFEST})
    if extra:
        raise ValueError(
            f"this DKT agent runs only the DKT app as dkt {__version__} builds it (a "
            f"{PYPROJECT} and nothing else), but the run's app also holds {_few(extra)}"
        )
    differences = _differences(got, tomllib.loads(tomli_w.dumps(app_pyproject())))
    if differences:
        version = _entry(got, "project", "version")
        built = f"; it was built by dkt {version}" if version != __version__ else ""
        raise ValueError(
            f"this DKT agent runs only the DKT app as dkt {__version__} builds it, but the "
            f"run's {PYPROJECT} differs in {_few(differences)}{built}: launch runs with "
            "the dkt version the agents run"
        )
    manifest = files.get(FAB_MANIFEST)
    if manifest is not None and manifest.decode(errors="replace") != _manifest(files[PYPROJECT]):
        raise ValueError(
            f"the run's app has another {FAB_MANIFEST} than Flower writes for DKT's app "
            f"(its {PYPROJECT} alone, with its SHA-256): this DKT agent runs no other"
        )


def _fab_files(fab: bytes) -> dict[str, bytes]:
    """The files of a FAB (a zip) by name; raises ValueError for one that is not a zip,
    names a file twice or holds one too large for DKT's app (never inflated)."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(fab)) as archive:
            infos = archive.infolist()
            names = [info.filename for info in infos]
            if len(set(names)) != len(names):
                raise ValueError("the run's app (FAB) names a file twice; DKT's never does")
            large = [i.filename for i in infos if i.file_size > _MAX_FAB_FILE_BYTES]
            if large:
                raise ValueError(
                    f"the run's app (FAB) holds files larger than DKT's app has: {_few(large)}"
                )
            return {info.filename: archive.read(info) for info in infos}
    except zipfile.BadZipFile as err:
        raise ValueError(f"the run's app is not a FAB (a zip): {err}") from None


def _entry(doc: object, *keys: str) -> object:
    """`doc[k1][k2]...`, or None where a table along the way is missing or not a table."""
    for key in keys:
        doc = doc.get(key) if isinstance(doc, dict) else None
    return doc


def _manifest(pyproject: bytes) -> str:
    """Flower's manifest (flwr/cli/build.py) of a FAB that holds only `pyproject`."""
    import hashlib

    return f"{PYPROJECT},{hashlib.sha256(pyproject).hexdigest()},{len(pyproject) * 8}"


def _differences(got: object, want: object, where: str = "") -> list[str]:
    """The dotted keys at which two TOML documents differ ("" for the whole)."""
    if not (isinstance(got, dict) and isinstance(want, dict)):
        return [] if got == want else [where or "the whole file"]
    found = []
    for key in sorted(set(got) | set(want), key=str):
        path = f"{where}.{key}" if where else str(key)
        if key not in got or key not in want:
            found.append(path)
        else:
            found.extend(_differences(got[key], want[key], path))
    return found


def _few(names: list[str], shown: int = 4, length: int = 80) -> str:
    """Some names, cut short (they come from the FAB), and how many more there are."""
    text = ", ".join(n if len(n) <= length else n[:length] + "…" for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


# The Runtime API calls a SuperExec signs with its secret (Flower's own list, in
# flwr/supercore/superexec/run_superexec.py).
SUPEREXEC_SIGNED = frozenset({"/flwr.proto.Runtime/AcquireTask"})


def _runtime_client(
    address: str, component: str, token: str | None, superexec_secret: bytes | None = None
) -> Any:
    from flwr.supercore.interceptors import (
        RuntimeTokenHttpInterceptor,
        RuntimeVersionHttpInterceptor,
    )
    from flwr.supercore.retry import make_simple_http_retry_invoker
    from flwr.supercore.runtime import RuntimeHttpClient

    interceptors: list[Any] = [RuntimeVersionHttpInterceptor(component_name=component)]
    if token is not None:
        interceptors.append(RuntimeTokenHttpInterceptor(token))
    if superexec_secret is not None:
        from flwr.supercore.interceptors.http.superexec_auth import SuperExecAuthHttpInterceptor

        interceptors.append(
            SuperExecAuthHttpInterceptor(
                master_secret=superexec_secret, protected_methods=SUPEREXEC_SIGNED
            )
        )
    return RuntimeHttpClient.from_server_address(
        server_address=address,
        insecure=True,  # the Runtime API listens on this host only
        root_certificates=None,
        interceptors=interceptors,
        retry_invoker=make_simple_http_retry_invoker(),
    )


def log(level: int, text: str, exc_info: BaseException | None = None) -> None:
    from flwr.supercore import log

    log(level, "[dkt-agent] %s", text, exc_info=exc_info)
