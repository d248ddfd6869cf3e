"""The embedded server: the `tritonserver` that the nvidia-pytriton wheel bundles, on this repository.

    python -m deploy.server      # CPU variant, ports 8000/8001/8002 on 127.0.0.1 (--bind-address), until Ctrl-C

It assembles a backend directory (the wheel's Python backend with the stub for
this interpreter, plus this repository's Python-based backends), starts
`tritonserver --model-config-name=cpu` in its own process group with this
environment's `bin/` first on PATH (the Python stub takes its site-packages from
there), waits until the server and every model are ready, and on stop (or SIGTERM to
`python -m deploy.server`) first drains: new turns are refused, `/v2/health/ready`
turns unready at once, and turns in flight run to their end, since Triton's own
SIGTERM handling would cut them (see `EmbeddedServer.drain`); then it sends SIGTERM,
waits for Triton to exit, and ends anything left in the group so that no stub
process or shared-memory region outlives it.

Models are under explicit control (`--model-control-mode=explicit --load-model=*`):
a stage whose Python stub died is brought back with `EmbeddedServer.reload_model`
(Triton 2.51 does not restart a dead stub). The admin APIs (repository, config, statistics,
trace, logging, shared memory) are always behind the admin key: `admin_key` when given, else a random per-run
key; either is written to `<workdir>/admin-key` (mode 0600), where tritonserver reads it (deploy/secret_argv.py:
never on its command line). `model_control="none"` gives Triton's default control mode (no reload, no readiness flip).

Options for deployments: `tls` (gRPC over TLS, deploy/tls.py), `admin_key` (model-repository, model-config,
shared-memory, statistics, trace and logging APIs, and HTTP inference, need the admin header) and `bind_address`
(127.0.0.1 unless asked); RELIABILITY.md says how to use them.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from deploy import secret_argv
from deploy.admin import ADMIN_HEADER, ORCHESTRATOR, active_sessions, admin_headers
from deploy.processes import busy_ports, stubs
from deploy.tls import TLSFiles
from deploy.triton_install import TritonInstall, assemble_backends
from ensemble.draining import DRAIN_FILE_ENV
from export.contract.artifacts import served_models
from export.contract.layout import BUILD, GRPC_PORT, HTTP_PORT, METRICS_PORT, MODEL_REPOSITORY

# Endpoints that change or expose the server rather than serve turns: gRPC and HTTP calls to these need the admin
# header. HTTP's inference API (infer, generate, generate_stream) needs it too (ServerOptions.http_restricted_apis):
# HTTP is never TLS here, so turns over it would be plain text beside a TLS gRPC port. Clients use gRPC.
ADMIN_APIS = ("model-repository", "model-config", "shared-memory", "statistics", "trace", "logging")
LOOPBACK = "127.0.0.1"  # ServerOptions.bind_address's default: nothing off this machine reaches the server
_ADMIN_KEY = re.compile(r"[A-Za-z0-9._~+/-]{16,256}")  # no ',', ':', '=' or spaces: they would break the flag
MODEL_CONTROL_MODES = ("explicit", "none")


# Thread pools of the stubs' numerical libraries: numpy's OpenBLAS starts a thread per core in every stub process
# and its idle threads spin (on the H100 host 8 orchestrators kept 16 cores busy at one session, BENCHMARKS.md);
# PyTorch's CPU ops follow OMP_NUM_THREADS; OpenCV keeps a pool of one thread per core in each process.
STUB_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENCV_FOR_THREADS_NUM")


@dataclass
class ServerOptions:
    repository: Path = MODEL_REPOSITORY  # the model repository to serve
    config_name: str = "cpu"  # --model-config-name: configs/<name>.pbtxt over config.pbtxt
    http_port: int = HTTP_PORT
    grpc_port: int = GRPC_PORT
    metrics_port: int = METRICS_PORT
    bind_address: str = LOOPBACK  # --{http,grpc,metrics}-address; "0.0.0.0": every interface (as in containers)
    workdir: Path = BUILD / "triton"  # assembled backends and the server log
    exit_timeout_s: int = 30  # --exit-timeout-secs: how long Triton drains in-flight work on SIGTERM
    drain_timeout_s: float | None = None  # stop(): how long to wait for turns in flight before SIGTERM
    #                                       (None: exit_timeout_s); see EmbeddedServer.drain
    ready_timeout_s: float = 180.0  # how long start() waits for every model to be ready
    log_verbose: int = 0
    extra_args: list[str] = field(default_factory=list)  # passed to tritonserver as they are
    tls: TLSFiles | None = None  # gRPC over TLS (--grpc-use-ssl[-mutual], cert, key, root cert); HTTP stays plain
    admin_key: str | None = None  # restrict ADMIN_APIS on gRPC and HTTP to calls sending header ADMIN_HEADER: <key>
    #                               (None: a random key is made for this run, see admin_key_file)
    admin_apis: tuple[str, ...] = ADMIN_APIS  # behind the key on gRPC and HTTP; HTTP adds "inference"
    model_control: str = "explicit"  # "explicit": every model loaded at start, reload/unload through the (admin-
    #                                  restricted) repository API; "none": Triton loads all and nothing can change
    admin_key_generated: bool = field(default=False, init=False)  # admin_key is the random per-run key

    def __post_init__(self) -> None:
        if self.model_control not in MODEL_CONTROL_MODES:
            raise ValueError(f"model_control must be one of {MODEL_CONTROL_MODES}, got {self.model_control!r}")
        if self.admin_key is None:
            # Never leave the admin APIs open: loading a model is code execution (a Python model's files can
            # come with the load request), and the logging and trace APIs take a file path to write to.
            self.admin_key, self.admin_key_generated = secrets.token_urlsafe(32), True
        if self.admin_key is not None and not _ADMIN_KEY.fullmatch(self.admin_key):
            raise ValueError("admin_key must be 16-256 characters of A-Z a-z 0-9 . _ ~ + / -")
        unknown = set(self.admin_apis) - set(ADMIN_APIS) - {"health", "metadata", "inference"}
        if unknown:
            raise ValueError(f"unknown restricted API(s) {sorted(unknown)}")
        try:
            ipaddress.IPv4Address(self.bind_address)
        except ValueError:
            raise ValueError(f"bind_address must be an IPv4 address, not {self.bind_address!r}") from None

    @property
    def host(self) -> str:
        """Where clients on this machine reach the server: localhost, unless it is bound to one other address."""
        return "localhost" if self.bind_address in (LOOPBACK, "0.0.0.0") else self.bind_address

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    @property
    def manifest_dir(self) -> Path:
        """The orchestrator's version folder: the export's manifest (what to load) is there."""
        return self.repository / "talking_head" / "1"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    @property
    def http_restricted_apis(self) -> tuple[str, ...]:
        """What needs the admin key on HTTP: admin_apis and the inference API (clients use gRPC)."""
        return tuple(dict.fromkeys((*self.admin_apis, "inference")))

    @property
    def admin_key_file(self) -> Path:
        """Where start() writes the admin key (mode 0600): tritonserver reads it, and so can operators."""
        return self.workdir / "admin-key"

    @property
    def drain_file(self) -> Path:
        """Exists while the server drains: the orchestrator and the registry then refuse new work."""
        return self.workdir / "draining"

    def security_args(self) -> list[str]:
        """tritonserver flags for tls and admin_key (empty when neither is set)."""
        args = self.tls.server_args() if self.tls is not None else []
        if self.admin_key is not None:
            key = f"{ADMIN_HEADER}={self.admin_key}"
            args += [f"--grpc-restricted-protocol={','.join(self.admin_apis)}:{key}",
                     f"--http-restricted-api={','.join(self.http_restricted_apis)}:{key}"]
        return args

    def address_args(self) -> list[str]:
        """tritonserver flags binding the three endpoints to bind_address."""
        return [f"--{endpoint}-address={self.bind_address}" for endpoint in ("http", "grpc", "metrics")]


class EmbeddedServer:
    """Start/stop the bundled tritonserver; a context manager for tests and the demo."""

    def __init__(self, options: ServerOptions | None = None):
        self.options = options or ServerOptions()
        self.process: subprocess.Popen | None = None
        self.log_path = self.options.workdir / "tritonserver.log"
        self.started_s: float | None = None  # seconds from launch to all models ready
        self.drain_s: float | None = None  # seconds the last drain() waited for turns in flight
        self.shm_regions: set[str] = set()  # /dev/shm regions of every stub this server started (see stop)
        self.install = TritonInstall.find()

    def command(self, backends: Path) -> list[str]:
        o = self.options
        return [
            str(self.install.binary),
            f"--model-repository={o.repository}",
            f"--model-config-name={o.config_name}",
            f"--backend-directory={backends}",
            *o.address_args(),
            f"--http-port={o.http_port}",
            f"--grpc-port={o.grpc_port}",
            f"--metrics-port={o.metrics_port}",
            f"--exit-timeout-secs={o.exit_timeout_s}",
            f"--log-verbose={o.log_verbose}",
            "--strict-readiness=true",
            "--grpc-infer-allocation-pool-size=0",  # pooled requests keep their largest buffers (RELIABILITY.md)
            *(["--model-control-mode=explicit", *(f"--load-model={m}" for m in served_models(o.manifest_dir, o.config_name))]
              if o.model_control == "explicit" else []),
            *o.security_args(),
            *o.extra_args,
        ]

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.install.lib_dir is not None:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(filter(None, [str(self.install.lib_dir), env.get("LD_LIBRARY_PATH")]))
        # The Python stub uses the site-packages of the first python on PATH: make it ours.
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        env[DRAIN_FILE_ENV] = str(self.options.drain_file)
        for var in STUB_THREAD_VARS:  # unless the caller chose: one BLAS/OpenMP thread per stub (see below)
            env.setdefault(var, "1")
        return env

    def start(self) -> "EmbeddedServer":
        o = self.options
        if not (o.repository / "talking_head" / "config.pbtxt").exists():
            raise RuntimeError(f"{o.repository} is not this project's model repository")
        if o.tls is not None:
            o.tls.check()
        taken = busy_ports([o.http_port, o.grpc_port, o.metrics_port])
        if taken:
            raise RuntimeError(f"port(s) {', '.join(map(str, taken))} already in use: stop the other server or choose"
                               " other ports (--http-port/--grpc-port/--metrics-port)")
        o.workdir.mkdir(parents=True, exist_ok=True)
        o.drain_file.unlink(missing_ok=True)  # left by a stop that was cut short
        o.admin_key_file.unlink(missing_ok=True)
        if o.admin_key is not None:
            fd = os.open(o.admin_key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(o.admin_key + "\n")
        backends = assemble_backends(o.workdir / "backends", self.install)
        t0 = time.perf_counter()
        if self.log_path.exists():  # the previous run's log (e.g. of a crash) is kept once
            self.log_path.replace(self.log_path.with_name(self.log_path.name + ".1"))
        command, env = secret_argv.hide(self.command(backends), self.environment(), o.admin_key, o.admin_key_file,
                                        BUILD / "secret_argv")
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.started_s = time.perf_counter() - t0
        self.shm_regions |= {st.shm_region for st in stubs(self.process.pid)}
        return self

    def _wait_ready(self, t0: float) -> None:
        deadline = t0 + self.options.ready_timeout_s
        tls = self.options.tls
        if tls is not None and tls.mutual and (tls.client_cert is None or tls.client_key is None):
            # mutual TLS and no client certificate to probe gRPC with: ask the (plain) HTTP endpoint
            self._poll_ready(deadline, self._http_ready)
            return
        with grpcclient.InferenceServerClient(self.options.grpc_url,
                                              **(tls.client_kwargs() if tls is not None else {})) as client:
            self._poll_ready(deadline, lambda: client.is_server_ready(headers=self._admin_headers()))

    def _poll_ready(self, deadline: float, ready) -> None:
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"tritonserver exited with code {self.process.returncode} during start-up;"
                                   f" last log lines:\n{self.log_tail()}")
            try:
                if ready():
                    return
            except Exception:  # not listening yet
                pass
            time.sleep(0.2)
        raise TimeoutError(f"tritonserver not ready after {self.options.ready_timeout_s:.0f} s;"
                           f" last log lines:\n{self.log_tail()}")

    def _http_ready(self) -> bool:
        request = urllib.request.Request(f"{self.options.http_url}/v2/health/ready",
                                         headers=self._admin_headers(grpc=False) or {})
        with urllib.request.urlopen(request, timeout=2) as r:
            return r.status == 200

    def _admin_headers(self, grpc: bool = True) -> dict[str, str] | None:
        return admin_headers(self.options.admin_key, grpc=grpc)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def admin_client(self) -> grpcclient.InferenceServerClient:
        """A gRPC client of this server (TLS as configured); send `admin_headers(options.admin_key)` with admin calls."""
        tls = self.options.tls
        return grpcclient.InferenceServerClient(self.options.grpc_url, **(tls.client_kwargs() if tls is not None else {}))

    def reload_model(self, name: str, timeout_s: float = 120.0) -> float:
        """Unload `name` and load it again (explicit model control); the seconds it took.

        This is how a stage whose Python stub died comes back: Triton 2.51 does not restart a dead
        stub, keeps the model READY and fails every request to it ("Stub process '<model>_0_0' is not
        healthy."), and a plain `load_model` of a loaded model whose files did not change does nothing.
        Unloading first makes the load start a new stub. Requests to `name` in between fail.
        """
        if self.options.model_control != "explicit":
            raise RuntimeError("reload_model needs model_control='explicit'")
        t0 = time.perf_counter()
        headers = self._admin_headers()
        with self.admin_client() as client:
            self.shm_regions |= {st.shm_region for st in stubs(self.process.pid)}
            client.unload_model(name, headers=headers)
            client.load_model(name, headers=headers, client_timeout=timeout_s)
            if not client.is_model_ready(name):
                raise RuntimeError(f"{name} is not ready after its reload; last log lines:\n{self.log_tail()}")
        self.shm_regions |= {st.shm_region for st in stubs(self.process.pid)}
        return time.perf_counter() - t0

    def set_parameters(self, name: str, parameters: dict[str, object], timeout_s: float = 120.0) -> float:
        """Load `name` again with these config `parameters` changed (e.g. talking_head's max_sessions); the
        seconds it took. Explicit model control: Triton loads the served config with the change as an
        override (the repository's config.pbtxt stays as it is) and swaps the model when it is ready."""
        if self.options.model_control != "explicit":
            raise RuntimeError("set_parameters needs model_control='explicit'")
        t0 = time.perf_counter()
        headers = self._admin_headers()
        with self.admin_client() as client:
            config = client.get_model_config(name, headers=headers, as_json=True)["config"]
            config.setdefault("parameters", {}).update({k: {"string_value": str(v)} for k, v in parameters.items()})
            client.load_model(name, config=json.dumps(config), headers=headers, client_timeout=timeout_s)
            if not client.is_model_ready(name):
                raise RuntimeError(f"{name} is not ready after its reload; last log lines:\n{self.log_tail()}")
        self.shm_regions |= {st.shm_region for st in stubs(self.process.pid)}
        return time.perf_counter() - t0

    def drain(self, timeout_s: float | None = None, poll_s: float = 0.05) -> float:
        """Refuse new work and turn unready at once, then wait until no turn is in flight (or timeout_s);
        the seconds it took.

        1. Creates options.drain_file: from then on `avatar_registry` refuses new registrations (and
           `talking_head` new turns) with UNAVAILABLE ("server is shutting down").
        2. With explicit model control, asks Triton to unload `talking_head`. Triton 2.51 marks it
           UNLOADING at once, so `/v2/health/ready` (strict readiness) answers 503 from then on, and
           refuses new turns itself ("Request for unknown model: 'talking_head' has no available
           versions", gRPC NOT_FOUND), while the turns in flight keep calling their stages and
           streaming until they end: the unload completes only after the last one (measured, see
           RELIABILITY.md). Once it completes, strict readiness would say ready again (an unloaded
           model does not count), so stop() sends SIGTERM as soon as the turns are done.
        3. Polls `talking_head_active_sessions` on the metrics port until it reads 0.

        All of this must happen BEFORE Triton gets SIGTERM: on SIGTERM Triton 2.51 stops every model at
        once and counts no decoupled BLS turn as in flight, so a turn still running would fail at its
        next stage call ("Server not ready"); see RELIABILITY.md.
        """
        o = self.options
        timeout_s = (o.exit_timeout_s if o.drain_timeout_s is None else o.drain_timeout_s) if timeout_s is None \
            else timeout_s
        t0 = time.perf_counter()
        o.drain_file.parent.mkdir(parents=True, exist_ok=True)
        o.drain_file.touch()
        if o.model_control == "explicit":
            self._unload_orchestrator()
        while True:
            try:
                if active_sessions(o.metrics_url) == 0:
                    break
            except OSError:  # metrics endpoint gone: nothing left to wait for
                break
            if time.perf_counter() - t0 >= timeout_s:
                break
            time.sleep(poll_s)
        self.drain_s = time.perf_counter() - t0
        return self.drain_s

    def _unload_orchestrator(self) -> None:
        """Start unloading talking_head (returns at once; Triton finishes the turns in flight first)."""
        try:
            with self.admin_client() as client:
                client.unload_model(ORCHESTRATOR, headers=self._admin_headers(), client_timeout=5)
        except Exception as e:  # the server may be gone or wedged: the drain file still refuses new turns
            print(f"drain: could not unload {ORCHESTRATOR} ({e}); readiness stays up until Triton stops",
                  file=sys.stderr, flush=True)

    def stop(self, drain: bool = True) -> int | None:
        """Drain (unless drain=False), SIGTERM, wait for Triton's own exit, then end whatever is left of the
        process group and remove the shared-memory regions its stubs left (a stub that was killed leaves
        its region behind: Triton never finalizes that instance)."""
        p = self.process
        if p is None:
            return None
        if p.poll() is None:
            self.shm_regions |= {st.shm_region for st in stubs(p.pid)}
            if drain:
                try:
                    self.drain()
                except KeyboardInterrupt:  # a second Ctrl-C: stop now
                    pass
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(timeout=self.options.exit_timeout_s + 15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        try:  # stubs that outlived the server (they should not)
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for region in self.shm_regions:
            if region:
                Path("/dev/shm", region).unlink(missing_ok=True)
        self.options.drain_file.unlink(missing_ok=True)
        self.options.admin_key_file.unlink(missing_ok=True)
        self.process = None
        return p.returncode

    def __enter__(self) -> "EmbeddedServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def endpoints(self) -> str:
        o = self.options
        return (f"gRPC    {o.grpc_url}\nHTTP    {o.http_url} (health and metadata; the rest needs the admin key)\n"
                f"metrics {o.metrics_url}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Run the embedded Triton server on this repository until Ctrl-C.")
    ap.add_argument("--repository", type=Path, default=MODEL_REPOSITORY, help="model repository to serve")
    ap.add_argument("--config-name", default="cpu", help="runtime variant: configs/<name>.pbtxt (default: cpu)")
    ap.add_argument("--http-port", type=int, default=HTTP_PORT)
    ap.add_argument("--grpc-port", type=int, default=GRPC_PORT)
    ap.add_argument("--metrics-port", type=int, default=METRICS_PORT)
    ap.add_argument("--bind-address", default=LOOPBACK, metavar="ADDR", help="IPv4 address the HTTP, gRPC and"
                    " metrics endpoints listen on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    ap.add_argument("--log-verbose", type=int, default=0, help="Triton log verbosity (0 = quiet)")
    ap.add_argument("--workdir", type=Path, default=ServerOptions.workdir, help="assembled backends and the log")
    ap.add_argument("--exit-timeout", type=int, default=ServerOptions.exit_timeout_s,
                    help="seconds SIGTERM waits for turns in flight (drain), and then Triton's own exit timeout")
    ap.add_argument("--tls-cert", type=Path, help="gRPC over TLS: the server certificate (PEM)")
    ap.add_argument("--tls-key", type=Path, help="gRPC over TLS: the server's private key (PEM)")
    ap.add_argument("--tls-root-cert", type=Path, help="gRPC over TLS: the CA certificate (PEM)")
    ap.add_argument("--tls-mutual", action="store_true", help="require client certificates signed by the CA")
    ap.add_argument("--admin-key-env", metavar="VAR",
                    help=f"restrict {', '.join(ADMIN_APIS)} (and HTTP inference) to calls with header"
                         f" {ADMIN_HEADER}: $VAR (default: a random key, written to WORKDIR/admin-key)")
    ap.add_argument("--model-control", choices=MODEL_CONTROL_MODES, default="explicit",
                    help="explicit (default): models can be reloaded through the admin-restricted repository API,"
                         " and SIGTERM turns readiness off at once; none: Triton's default")
    ap.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="say ready when Triton is (default: "
                    "after a spoken and a text canary turn through every model, so no user gets the cold turn)")
    args = ap.parse_args(argv)
    tls_paths = (args.tls_cert, args.tls_key, args.tls_root_cert)
    if (any(tls_paths) or args.tls_mutual) and not all(tls_paths):
        ap.error("--tls-cert, --tls-key and --tls-root-cert go together (and --tls-mutual needs them)")
    tls = TLSFiles(args.tls_cert, args.tls_key, args.tls_root_cert, mutual=args.tls_mutual) if all(tls_paths) else None
    admin_key = None
    if args.admin_key_env:
        admin_key = os.environ.get(args.admin_key_env)
        if not admin_key:
            ap.error(f"--admin-key-env: ${args.admin_key_env} is not set")
    try:
        options = ServerOptions(args.repository, args.config_name, http_port=args.http_port, grpc_port=args.grpc_port,
                                metrics_port=args.metrics_port, bind_address=args.bind_address, workdir=args.workdir,
                                log_verbose=args.log_verbose, exit_timeout_s=args.exit_timeout, tls=tls,
                                admin_key=admin_key, model_control=args.model_control)
    except ValueError as e:  # a bad --bind-address or admin key
        ap.error(str(e))
    server = EmbeddedServer(options)
    print(f"starting tritonserver on {args.repository} ({args.config_name}); log: {server.log_path}", flush=True)
    stop = {"now": False, "serving": False}

    def on_sigterm(*_):
        if not stop["serving"]:  # during start-up: abort it (start() stops what it started)
            raise KeyboardInterrupt
        server.options.drain_file.touch()  # refuse new work at once; stop() below drains, then stops Triton
        stop["now"] = True

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        server.start()
        if args.warm_up and not args.tls_mutual:  # the canary has no client certificate
            from deploy import canary

            print(f"warm-up turns (deploy/canary.py): {canary.run(options.grpc_url, 900, args.tls_root_cert):.1f} s")
    except (KeyboardInterrupt, Exception) as e:
        server.stop()
        print(f"start-up {'interrupted' if isinstance(e, KeyboardInterrupt) else f'failed: {e}'}; tritonserver "
              "stopped", flush=True)
        return 1
    stop["serving"] = True
    key = f"\nadmin key (random, this run): {server.options.admin_key_file}" if server.options.admin_key_generated else ""
    print(f"ready in {server.started_s:.1f} s\n{server.endpoints()}{key}\nCtrl-C stops it.", flush=True)
    died = None
    try:
        while not stop["now"] and (died := server.process.poll()) is None:
            time.sleep(0.02)  # a signal does not cut a sleep short (PEP 475): this bounds the drain's start
    except KeyboardInterrupt:
        pass
    finally:
        if server.process is not None and server.process.poll() is None:
            print("stopping: refusing new turns, waiting for turns in flight", flush=True)
        code = server.stop()
        drained = f"; drained in {server.drain_s:.2f} s" if server.drain_s is not None else ""
        print(f"tritonserver stopped (exit code {code}{drained})", flush=True)
    if died is not None:  # not asked to stop: a supervisor (compose, Kubernetes) must see a failure and restart it
        print(f"tritonserver died on its own (exit code {died}); its log ends:\n{server.log_tail(30)}", file=sys.stderr,
              flush=True)
        return died if died > 0 else 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
