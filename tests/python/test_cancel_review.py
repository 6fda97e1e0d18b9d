"""Adversarial review of c6bfd46 (dashboard cancel) and 05ddfe6 (HTTP review fixes), against a
real shmschedd: states tests/python/test_observability.py never reaches. Each reproduction of a
defect failed before its fix. Needs root for the throwaway user (as test_observability.py)."""
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

import shmsched

CAPACITY = 1


def wait_until(condition, what, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


class Daemon:
    """shmschedd on a free port, as test_observability.start_daemon, keeping the process."""

    def __init__(self, extra=(), open_to_all=False):
        """open_to_all: every local user may reach the ingress socket (a world-searchable runtime
        directory, a socket made under umask 0), so that identity, not reach, decides."""
        bin_dir = os.environ["SHMSCHED_BIN_DIR"]
        plugin_dir = os.environ["SHMSCHED_PLUGIN_DIR"]
        self.run_dir = tempfile.mkdtemp(prefix="shmsched-rev2-")
        if open_to_all:
            os.chmod(self.run_dir, 0o755)
        self.segment = "shmsched-rev2-" + uuid.uuid4().hex[:12]
        self.log_path = os.path.join(self.run_dir, "shmschedd.log")
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [os.path.join(bin_dir, "shmschedd"), "--runtime-dir=" + self.run_dir,
             "--segment=" + self.segment, "--plugin-dir=" + plugin_dir, "--idle-spin-us=0",
             "--metrics-listen=127.0.0.1:0", f"--max-active-executions={CAPACITY}", *extra],
            stdout=self.log, stderr=subprocess.STDOUT,
            preexec_fn=(lambda: os.umask(0)) if open_to_all else None)
        self.port = None
        deadline = time.monotonic() + 20
        while self.port is None:
            found = re.search(r"metrics on http://127\.0\.0\.1:(\d+)/metrics",
                              open(self.log_path).read())
            if found:
                self.port = int(found.group(1))
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("shmschedd did not start: " + open(self.log_path).read())
            else:
                time.sleep(0.05)
        self.ingress = f"ipc://{self.run_dir}/ingress.sock"
        wait_until(lambda: http(self.port, "GET", "/healthz")[0] == 200, "healthz")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)
        self.log.close()
        shutil.rmtree(self.run_dir, ignore_errors=True)
        try:
            os.unlink("/dev/shm/" + self.segment)
        except FileNotFoundError:
            pass


def http(port, method, target, body=b"", headers=None, host=None, timeout=10):
    """One raw HTTP/1.1 request on its own connection: (status, body)."""
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host or f'127.0.0.1:{port}'}",
             "Connection: close", f"Content-Length: {len(body)}"]
    for k, v in (headers or {}).items():
        lines.append(f"{k}: {v}")
    raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(raw)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            out += chunk
    if not out.startswith(b"HTTP/1.1 "):
        return None, ""
    head, _, rest = out.partition(b"\r\n\r\n")
    return int(out[9:12]), rest.decode(errors="replace")


def cancel_body(execution_id):
    return json.dumps({"execution_id": execution_id}).encode()


@pytest.fixture()
def daemon_with_cancel():
    d = Daemon(["--dashboard-cancel=true"])
    yield d
    d.stop()


@pytest.fixture()
def open_daemon_with_cancel():
    """Every local user may reach its ingress: identity alone decides."""
    d = Daemon(["--dashboard-cancel=true"], open_to_all=True)
    yield d
    d.stop()


def fill_and_queue(client, *ids_and_users):
    """Fills the capacity, then queues the given (execution_id, user) pairs behind it."""
    for i in range(CAPACITY):
        client.submit("filler", b"x", execution_id=f"fill-{i}")
    for execution_id, user in ids_and_users:
        client.submit(user, b"x", execution_id=execution_id)


# What the throwaway user runs: a cancel POSTed, the socket closed at once without reading the
# answer (close(): the socket is orphaned; the kernel keeps it as a FIN-WAIT-2 time-wait socket,
# which sock_diag reports with uid 0). Argument: port, execution id, attempts.
CLOSE_AT_ONCE = r"""
import json, socket, sys, time
port, execution_id, attempts = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
# Padded to near the body limit: reading and parsing it gives the close time to land first.
body = json.dumps({"execution_id": execution_id, "reason": "x" * 60000}).encode()
request = (f"POST /api/cancel HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
busy = (f"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n" * 20).encode()
for _ in range(attempts):
    # Work for the single HTTP thread first (pipelined scrapes on other connections), so that
    # the close below lands before the cancel is read.
    others = []
    for _ in range(8):
        o = socket.socket()
        o.connect(("127.0.0.1", port))
        o.sendall(busy)
        others.append(o)
    s = socket.socket()
    s.connect(("127.0.0.1", port))
    s.sendall(request)
    s.close()
    time.sleep(0.05)
    for o in others:
        o.close()
"""


def test_a_local_user_cannot_cancel_others_executions_by_closing_at_once(
        open_daemon_with_cancel, local_user):
    d = open_daemon_with_cancel
    client = shmsched.Client(d.ingress)
    fill_and_queue(client, ("bobs-1", "bob"), ("bobs-2", "bob"))
    script = ["runuser", "-u", local_user, "--", "/usr/bin/python3", "-c", CLOSE_AT_ONCE,
              str(d.port)]
    # Deterministic: the daemon is stopped while the user's request arrives and its socket
    # closes (what a busy HTTP thread does too); it reads the request afterwards.
    d.proc.send_signal(signal.SIGSTOP)
    try:
        subprocess.run(script + ["bobs-1", "1"], check=True, timeout=30)
        time.sleep(0.2)
    finally:
        d.proc.send_signal(signal.SIGCONT)
    # Without stopping anything: a plain race the user repeats until it wins.
    subprocess.run(script + ["bobs-2", "20"], check=True, timeout=60)
    time.sleep(1)
    log = open(d.log_path).read()
    assert client.status("bobs-1")["state"] == "queued", log
    assert client.status("bobs-2")["state"] == "queued", log


def test_control_a_user_who_waits_for_the_answer_is_refused(open_daemon_with_cancel,
                                                            local_user):
    """Control for the test above: the same user, reading the answer, is refused (403)."""
    d = open_daemon_with_cancel
    client = shmsched.Client(d.ingress)
    fill_and_queue(client, ("bobs", "bob"))
    script = r"""
import json, socket, sys
port = int(sys.argv[1])
body = json.dumps({"execution_id": "bobs"}).encode()
s = socket.create_connection(("127.0.0.1", port))
s.sendall((f"POST /api/cancel HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
          + body)
out = b""
while chunk := s.recv(65536):
    out += chunk
print(out[9:12].decode())
"""
    out = subprocess.run(["runuser", "-u", local_user, "--", "/usr/bin/python3", "-c", script,
                          str(d.port)], capture_output=True, text=True, check=True, timeout=30)
    assert out.stdout.strip() == "403"
    assert client.status("bobs")["state"] == "queued"


def test_the_dashboards_own_page_may_cancel(daemon_with_cancel):
    d = daemon_with_cancel
    client = shmsched.Client(d.ingress)
    fill_and_queue(client, ("own-page", "bob"))
    # What Chromium sends for the page's fetch(): Host and the page's own Origin.
    status, body = http(d.port, "POST", "/api/cancel", cancel_body("own-page"),
                        {"Content-Type": "application/json",
                         "Origin": f"http://127.0.0.1:{d.port}"})
    assert (status, body) == (200, '{"ok":true}'), body
    assert client.status("own-page")["state"] == "cancelled"


def test_control_without_origin_root_cancels(daemon_with_cancel):
    d = daemon_with_cancel
    client = shmsched.Client(d.ingress)
    fill_and_queue(client, ("no-origin", "bob"))
    status, body = http(d.port, "POST", "/api/cancel", cancel_body("no-origin"),
                        {"Content-Type": "application/json"})
    assert status == 200, body


def test_csrf_shapes_are_refused(daemon_with_cancel):
    """What a page of another origin can make a browser send: all refused (sound)."""
    d = daemon_with_cancel
    client = shmsched.Client(d.ingress)
    fill_and_queue(client, ("csrf", "bob"))
    body = cancel_body("csrf")
    # fetch(mode: "no-cors") drops a non-safelisted Content-Type: text/plain goes out.
    assert http(d.port, "POST", "/api/cancel", body,
                {"Content-Type": "text/plain;charset=UTF-8",
                 "Origin": "http://evil.example"})[0] == 415
    # A form with enctype=text/plain, from a sandboxed frame (Origin: null).
    assert http(d.port, "POST", "/api/cancel", body,
                {"Content-Type": "text/plain", "Origin": "null"})[0] == 415
    assert http(d.port, "POST", "/api/cancel", body,
                {"Content-Type": "application/json; charset=utf-8", "Origin": "null"})[0] == 403
    # DNS rebinding: the attacker's name as Host.
    assert http(d.port, "POST", "/api/cancel", body, {"Content-Type": "application/json"},
                host=f"rebind.example:{d.port}")[0] == 421
    # The preflight a cross-origin JSON POST needs is not granted.
    assert http(d.port, "OPTIONS", "/api/cancel", b"",
                {"Origin": "http://evil.example",
                 "Access-Control-Request-Method": "POST"})[0] == 405
    assert client.status("csrf")["state"] == "queued"


def test_a_user_who_cannot_reach_the_ingress_cannot_cancel_over_http(daemon_with_cancel,
                                                                     local_user):
    d = daemon_with_cancel
    client = shmsched.Client(d.ingress)
    # An application user whose name happens to be a local account's (e.g. a service account).
    fill_and_queue(client, ("same-name", local_user))
    reach = r"""
import os, sys
print(os.access(sys.argv[1], os.W_OK))
"""
    sock = d.ingress[len("ipc://"):]
    out = subprocess.run(["runuser", "-u", local_user, "--", "/usr/bin/python3", "-c", reach,
                          sock], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() != "True"  # the ingress is out of its reach
    status_line = subprocess.run(
        ["runuser", "-u", local_user, "--", "/usr/bin/python3", "-c",
         "import urllib.request, sys, json\n"
         "r = urllib.request.Request(sys.argv[1] + '/api/cancel', method='POST',"
         " data=json.dumps({'execution_id': 'same-name'}).encode(),"
         " headers={'Content-Type': 'application/json'})\n"
         "try:\n"
         "    print(urllib.request.urlopen(r, timeout=10).status)\n"
         "except Exception as e:\n"
         "    print(getattr(e, 'code', e))\n",
         f"http://127.0.0.1:{d.port}"], capture_output=True, text=True, timeout=30)
    # As on the ingress: who cannot connect cannot cancel.
    assert status_line.stdout.strip() != "200"
    assert client.status("same-name")["state"] == "queued"


def test_the_oldest_wait_is_seen_behind_many_cancelled_heads():
    """More cancelled heads than head_enqueued_at looks through (1024): still seen (sound)."""
    d = Daemon(["--max-executions-per-user=5000"])
    try:
        client = shmsched.Client(d.ingress)
        client.submit("filler", b"x", execution_id="fill-0")  # the capacity (1) is taken
        for i in range(1100):
            client.submit("u", b"x", priority="low", execution_id=f"t-{i}")
        client.submit("u", b"x", priority="low", execution_id="waiting")
        for i in range(1100):
            client.cancel(f"t-{i}")
        assert client.status("waiting")["state"] == "queued"
        time.sleep(1.5)  # the heads are read every 50 ms; the gauge needs > 0 s of wait

        def oldest_low():
            _, text = http(d.port, "GET", "/metrics")
            found = re.search(
                r'^shmsched_queue_oldest_wait_seconds\{priority="low"\} (\S+)$', text, re.M)
            return float(found.group(1)) if found else None
        assert (oldest_low() or 0) > 1.0, "the oldest low wait is not seen"
    finally:
        d.stop()


def test_control_the_oldest_wait_is_seen_behind_a_few_cancelled_heads():
    d = Daemon()
    try:
        client = shmsched.Client(d.ingress)
        client.submit("filler", b"x", execution_id="fill-0")
        for i in range(10):
            client.submit("u", b"x", priority="low", execution_id=f"t-{i}")
        client.submit("u", b"x", priority="low", execution_id="waiting")
        for i in range(10):
            client.cancel(f"t-{i}")
        time.sleep(1.5)
        _, text = http(d.port, "GET", "/metrics")
        found = re.search(r'^shmsched_queue_oldest_wait_seconds\{priority="low"\} (\S+)$',
                          text, re.M)
        assert found and float(found.group(1)) > 1.0, text
    finally:
        d.stop()
