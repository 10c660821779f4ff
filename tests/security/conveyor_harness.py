"""Harness for the hostile-input suite (security_test.py): scheduler processes, raw HTTP, psql, JSON builders.

Everything here is stdlib only. Processes started through `Scheduler` are registered and stopped by pid (SIGTERM,
then SIGKILL after 15 s) by `stop_all()`, which security_test.py calls at the end of the module and at exit.
"""

from __future__ import annotations

import atexit
import dataclasses
import hashlib
import json
import os
import re
import resource
import secrets
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

DEFAULT_PG_URL = "postgresql://postgres@127.0.0.1:5432/conveyor"
DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2f"

PG_URL = os.environ.get("CONVEYOR_PG_URL", DEFAULT_PG_URL)
AMQP_URL = os.environ.get("CONVEYOR_AMQP_URL", DEFAULT_AMQP_URL)

# One id per run of the suite: it is in every payload marker, idempotency key and schedule name, so reruns against
# the same database never meet each other's rows, and the clean-up finds exactly this run's rows.
RUN_ID = secrets.token_hex(4)

BINARY_WAIT_SECONDS = 180
STOP_GRACE_SECONDS = 15
READY_TIMEOUT_SECONDS = 30

_bin_dir = Path("build/bin")
_work_dir = Path(tempfile.mkdtemp(prefix=f"conveyor-security-{RUN_ID}-"))
_live_processes: list["Scheduler"] = []


def configure(bin_dir: str) -> None:
    global _bin_dir
    _bin_dir = Path(bin_dir).resolve()


def work_dir() -> Path:
    return _work_dir


def binary(name: str) -> Path:
    """The path of a built binary, waiting (bounded) while a rebuild has it missing or half written."""
    path = _bin_dir / name
    deadline = time.monotonic() + BINARY_WAIT_SECONDS
    while time.monotonic() < deadline:
        if path.is_file() and os.access(path, os.X_OK) and time.time() - path.stat().st_mtime > 2:
            return path
        time.sleep(1)
    raise FileNotFoundError(f"{path} did not appear within {BINARY_WAIT_SECONDS} s (is a build running?)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def base_env(**overrides: str) -> dict:
    env = dict(os.environ)
    env["CONVEYOR_PG_URL"] = PG_URL
    env["CONVEYOR_AMQP_URL"] = AMQP_URL
    env.update(overrides)
    return env


# ----------------------------------------------------------------------------------------------------------------
# Tokens


@dataclasses.dataclass(frozen=True)
class Token:
    name: str
    secret: str
    scopes: tuple[str, ...]
    rate_limit: int = 1000

    @staticmethod
    def new(name: str, *scopes: str) -> "Token":
        return Token(name, f"tok-{name}-{secrets.token_hex(16)}", tuple(scopes))

    def rotated(self) -> "Token":
        return dataclasses.replace(self, secret=f"tok-{self.name}-{secrets.token_hex(16)}")

    def entry(self) -> dict:
        digest = hashlib.sha256(self.secret.encode()).hexdigest()
        return {"name": self.name, "sha256": digest, "scopes": list(self.scopes), "rate_limit": self.rate_limit}


def write_tokens_file(tokens: Iterable[Token]) -> Path:
    """A tokens file (JSON is YAML) in the suite's temporary directory."""
    path = _work_dir / f"tokens-{secrets.token_hex(4)}.yaml"
    path.write_text(json.dumps({"tokens": [token.entry() for token in tokens]}, indent=1) + "\n")
    return path


def write_file(name: str, text: str) -> Path:
    path = _work_dir / f"{secrets.token_hex(3)}-{name}"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Processes


def cli(*args: str, env: Optional[dict] = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs the operator CLI `conveyor`; output as text, stderr apart."""
    return subprocess.run([str(binary("conveyor")), *args], env=env or base_env(), capture_output=True, text=True,
                          timeout=timeout)


def scheduler_help(env: dict) -> str:
    done = subprocess.run([str(binary("conveyor-scheduler")), "--help"], env=env, capture_output=True, text=True,
                          timeout=30)
    return done.stdout + done.stderr


class Scheduler:
    """One conveyor-scheduler on a free port of 127.0.0.1, its stdout and stderr in files of the temporary dir."""

    def __init__(self, label: str, tokens_file: Optional[Path], args: Iterable[str] = (),
                 env: Optional[dict] = None, nofile: Optional[int] = None, pass_urls: bool = False):
        self.label = label
        self.port = free_port()
        self.args = [*args]
        self.tokens_file = tokens_file
        self.env = env if env is not None else base_env()
        self.nofile = nofile
        self.pass_urls = pass_urls
        self.process: Optional[subprocess.Popen] = None
        self.stdout_path = _work_dir / f"{label}-{self.port}.stdout"
        self.stderr_path = _work_dir / f"{label}-{self.port}.stderr"

    def command(self) -> list[str]:
        command = [str(binary("conveyor-scheduler")), "--http-address", "127.0.0.1", "--http-port", str(self.port),
                   "--archive-dead-letters", "false", "--pg-pool-size", "3", "--shutdown-grace", "2s"]
        if self.tokens_file is not None:
            command += ["--api-tokens-file", str(self.tokens_file)]
        if self.pass_urls:
            command += ["--pg-url", self.env["CONVEYOR_PG_URL"], "--amqp-url", self.env["CONVEYOR_AMQP_URL"]]
        return command + self.args

    def _limit_files(self) -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.nofile, self.nofile))

    def start(self) -> "Scheduler":
        command = self.command()
        with open(self.stdout_path, "wb") as stdout, open(self.stderr_path, "wb") as stderr:
            self.process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                            env=self.env, preexec_fn=self._limit_files if self.nofile else None)
        _live_processes.append(self)
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_for(self, path: str, status: int = 200, timeout: float = READY_TIMEOUT_SECONDS) -> bool:
        """Polls `path` until it answers `status`; False if the process ends or the time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.running():
            try:
                if request(self.port, "GET", path, timeout=2).status == status:
                    return True
            except OSError:
                pass
            time.sleep(0.1)
        return False

    def start_ready(self) -> "Scheduler":
        """Starts it and waits for /readyz 200; stops it and raises with its log otherwise."""
        self.start()
        if not self.wait_for("/readyz"):
            self.stop()
            raise RuntimeError(f"scheduler {self.label} did not become ready (expected /readyz 200 within "
                               f"{READY_TIMEOUT_SECONDS} s); exit status {self.process.returncode}; log tail:\n"
                               f"{self.log_tail()}")
        return self

    def stop(self) -> Optional[int]:
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                os.kill(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=STOP_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
            except ProcessLookupError:
                pass
        if self in _live_processes:
            _live_processes.remove(self)
        return self.process.returncode

    def log(self) -> str:
        text = ""
        for path in (self.stdout_path, self.stderr_path):
            if path.exists():
                text += path.read_bytes().decode("utf-8", "replace")
        return text

    def log_line_count(self) -> int:
        return sum(1 for line in self.log().splitlines() if line.strip())

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def cpu_seconds(self) -> float:
        """User plus system CPU time of the process so far, from /proc/<pid>/stat."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def metrics(self) -> str:
        return request(self.port, "GET", "/metrics").text

    def api(self, method: str, path: str, body=None, token: Optional[Token] = None, headers=None,
            timeout: float = 10) -> "Response":
        return request(self.port, method, path, body=body, token=token, headers=headers, timeout=timeout)


def stop_all() -> None:
    for process in list(_live_processes):
        try:
            process.stop()
        except Exception:  # noqa: BLE001 - best effort: every other process must still be stopped
            pass


atexit.register(stop_all)


# ----------------------------------------------------------------------------------------------------------------
# HTTP over raw sockets (http.client refuses the malformed targets and headers these tests send on purpose)


@dataclasses.dataclass
class Response:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self):
        return json.loads(self.body)

    @property
    def error(self) -> str:
        """The {"error": ...} message, or the body's text."""
        try:
            return str(self.json().get("error", self.text))
        except (ValueError, AttributeError):
            return self.text

    def __str__(self) -> str:
        body = self.text if len(self.body) < 400 else self.text[:400] + "…"
        return f"HTTP {self.status} {body.strip()!r}"


class ConnectionClosed(Exception):
    pass


class HttpConnection:
    """One TCP connection to the server, with a read buffer so pipelined answers can be read one by one."""

    def __init__(self, port: int, timeout: float = 10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.timeout = timeout
        self.buffer = b""

    def __enter__(self) -> "HttpConnection":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise socket.timeout("response not complete in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionClosed("connection closed by the server")
        self.buffer += chunk

    def _read_until(self, marker: bytes, deadline: float) -> bytes:
        while marker not in self.buffer:
            self._fill(deadline)
        head, self.buffer = self.buffer.split(marker, 1)
        return head

    def _read_exactly(self, size: int, deadline: float) -> bytes:
        while len(self.buffer) < size:
            self._fill(deadline)
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def _read_chunked(self, deadline: float) -> bytes:
        body = b""
        while True:
            size = int(self._read_until(b"\r\n", deadline).split(b";")[0], 16)
            if size == 0:
                self._read_until(b"\r\n", deadline)
                return body
            body += self._read_exactly(size, deadline)
            self._read_exactly(2, deadline)

    def _read_to_close(self, deadline: float) -> bytes:
        try:
            while True:
                self._fill(deadline)
        except ConnectionClosed:
            pass
        body, self.buffer = self.buffer, b""
        return body

    def read_response(self, timeout: Optional[float] = None, head_request: bool = False) -> Response:
        deadline = time.monotonic() + (timeout or self.timeout)
        head = self._read_until(b"\r\n\r\n", deadline).decode("latin-1")
        status_line, *header_lines = head.split("\r\n")
        parts = status_line.split(" ", 2)
        headers = [tuple(part.strip() for part in line.split(":", 1)) for line in header_lines if ":" in line]
        response = Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, b"")
        if head_request or response.status in (100, 204, 304):
            return response
        if (response.header("Transfer-Encoding") or "").lower() == "chunked":
            response.body = self._read_chunked(deadline)
        elif response.header("Content-Length") is not None:
            response.body = self._read_exactly(int(response.header("Content-Length")), deadline)
        else:
            response.body = self._read_to_close(deadline)
        return response

    def closed_by_peer(self, timeout: float = 2) -> bool:
        """True once the server closes (or resets) the connection within `timeout` with nothing more sent."""
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.sock.settimeout(max(0.01, deadline - time.monotonic()))
                if not self.sock.recv(65536):
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
        return False


def encode_request(method: str, path: str, body=None, token: Optional[Token] = None, headers=None,
                   keep_alive: bool = False) -> bytes:
    if isinstance(body, (dict, list)):
        body = json.dumps(body)
    if isinstance(body, str):
        body = body.encode("utf-8")
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1"]
    if token is not None:
        lines.append(f"Authorization: Bearer {token.secret}")
    if body is not None:
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def request(port: int, method: str, path: str, body=None, token: Optional[Token] = None, headers=None,
            timeout: float = 10) -> Response:
    """One request on a fresh connection. `body` may be bytes, text or something json.dumps takes."""
    with HttpConnection(port, timeout) as connection:
        connection.send(encode_request(method, path, body, token, headers))
        return connection.read_response(head_request=(method == "HEAD"))


def raw_exchange(port: int, data: bytes, timeout: float = 5) -> tuple[bytes, bool, float]:
    """Sends raw bytes and reads until the server closes or `timeout` passes: (bytes read, closed, seconds)."""
    started = time.monotonic()
    received = b""
    closed = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            return received, True, time.monotonic() - started
        deadline = started + timeout
        try:
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
        except ConnectionResetError:
            closed = True
        except socket.timeout:
            pass
    return received, closed, time.monotonic() - started


def raw_verdict(port: int, data: bytes, timeout: float = 5) -> tuple[Optional[int], bool, float]:
    """Sends raw bytes and waits for the first status line or a close: (status or None, closed, seconds)."""
    started = time.monotonic()
    received = b""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
            while b"\r\n" not in received and time.monotonic() - started < timeout:
                sock.settimeout(max(0.01, timeout - (time.monotonic() - started)))
                chunk = sock.recv(65536)
                if not chunk:
                    return status_of(received), True, time.monotonic() - started
                received += chunk
        except (BrokenPipeError, ConnectionResetError):
            return status_of(received), True, time.monotonic() - started
        except socket.timeout:
            pass
    return status_of(received), False, time.monotonic() - started


def open_connections(port: int, count: int, first_bytes: bytes = b"", within: float = 3) -> list[socket.socket]:
    """Opens up to `count` connections (non-blocking, within `within` seconds), sending `first_bytes` on each."""
    opened = []
    deadline = time.monotonic() + within
    while len(opened) < count and time.monotonic() < deadline:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        opened.append(sock)
    if first_bytes:
        time.sleep(0.2)
        for sock in opened:
            try:
                sock.send(first_bytes)
            except OSError:
                pass
    return opened


def close_all(sockets: Iterable[socket.socket]) -> None:
    for sock in sockets:
        try:
            sock.close()
        except OSError:
            pass


def wait_until(predicate, timeout: float, interval: float = 0.1) -> bool:
    """Polls `predicate` until true or `timeout` seconds; exceptions count as false."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return True
        except (OSError, ConnectionClosed):
            pass
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def status_of(raw: bytes) -> Optional[int]:
    match = re.match(rb"HTTP/1\.[01] (\d{3})", raw)
    return int(match.group(1)) if match else None


def metric_value(metrics_text: str, name: str, labels: Optional[dict] = None) -> Optional[float]:
    """The sum of the samples of `name` whose labels include `labels`; None when there is no such sample."""
    total = None
    for line in metrics_text.splitlines():
        if line.startswith("#"):
            continue
        match = re.match(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not match or match.group(1) != name:
            continue
        sample_labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(sample_labels.get(key) == value for key, value in (labels or {}).items()):
            total = (total or 0.0) + float(match.group(3))
    return total


def metric_type(metrics_text: str, name: str) -> Optional[str]:
    match = re.search(rf"^# TYPE {re.escape(name)} (\w+)", metrics_text, re.MULTILINE)
    return match.group(1) if match else None


# ----------------------------------------------------------------------------------------------------------------
# PostgreSQL through psql


def psql(sql: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Runs `sql` (stopping at the first error); rc 0 when every statement succeeded."""
    return subprocess.run(["psql", PG_URL, "-X", "-q", "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
                          capture_output=True, text=True, timeout=timeout)


def psql_value(sql: str) -> str:
    done = psql(sql)
    if done.returncode != 0:
        raise RuntimeError(f"psql failed: {sql}\n{done.stderr}")
    return done.stdout.strip()


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def rows_with_marker(marker: str) -> int:
    """Rows of conveyor.scheduled_jobs carrying `marker` in their payload, idempotency key or correlation id."""
    literal = sql_literal(marker)
    return int(psql_value(
        "SELECT count(*) FROM conveyor.scheduled_jobs WHERE strpos(payload::text, " + literal + ") > 0 OR "
        "strpos(coalesce(idempotency_key, ''), " + literal + ") > 0 OR "
        "strpos(coalesce(correlation_id, ''), " + literal + ") > 0"))


def delete_run_rows() -> None:
    """Removes what this run stored: its scheduled jobs, schedules and dead letters (all carry RUN_ID)."""
    run = sql_literal(RUN_ID)
    psql("DELETE FROM conveyor.scheduled_jobs WHERE strpos(payload::text, " + run + ") > 0 OR "
         "strpos(coalesce(idempotency_key, ''), " + run + ") > 0 OR strpos(coalesce(correlation_id, ''), " + run +
         ") > 0 OR strpos(source, " + run + ") > 0;"
         "DELETE FROM conveyor.schedules WHERE strpos(name, " + run + ") > 0;"
         "DELETE FROM conveyor.dead_letters WHERE strpos(archive_key, " + run + ") > 0;")


# ----------------------------------------------------------------------------------------------------------------
# JSON text builders (json.dumps recurses, and these go far deeper than its recursion limit)


def nested_objects(levels: int, marker: str) -> str:
    """A payload object `levels` deep: the payload is level 1, `{"a":{"b":1}}` is 2."""
    inner = '{"d":' * (levels - 1) + '{"leaf":1}' + "}" * (levels - 1)
    return '{"marker":' + json.dumps(marker) + "," + inner[1:]


def nested_arrays(levels: int, marker: str) -> str:
    """A payload `levels` deep where every level but the first is an array: {"a":[[...[1]...]]}."""
    return '{"marker":' + json.dumps(marker) + ',"a":' + "[" * (levels - 1) + "1" + "]" * (levels - 1) + "}"


def nested_mixed(levels: int, marker: str) -> str:
    """A payload `levels` deep of arrays and objects alternating below the payload object."""
    pairs, odd = divmod(levels - 1, 2)
    inner = '[{"b":' * pairs + ("[1]" if odd else "1") + "}]" * pairs
    return '{"marker":' + json.dumps(marker) + ',"a":' + inner + "}"


def job_json(job_type: str, payload: str, **fields) -> str:
    """A job as JSON text around a payload given as JSON text (so it can be deep or malformed on purpose)."""
    extra = "".join("," + json.dumps(name) + ":" + json.dumps(value) for name, value in fields.items())
    return '{"type":' + json.dumps(job_type) + ',"payload":' + payload + extra + "}"


def batch_json(*jobs: str) -> str:
    return '{"jobs":[' + ",".join(jobs) + "]}"
