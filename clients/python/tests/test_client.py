"""The Python client against a real shmschedd (started here, in a temporary runtime directory).
Run by ctest (label "python"): SHMSCHED_BIN_DIR and SHMSCHED_PLUGIN_DIR name the build's."""
import os
import queue
import threading
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import pytest

import shmsched


@pytest.fixture()
def daemon():
    bin_dir = os.environ["SHMSCHED_BIN_DIR"]
    plugin_dir = os.environ["SHMSCHED_PLUGIN_DIR"]
    run_dir = tempfile.mkdtemp(prefix="shmsched-py-")
    segment = "shmsched-py-" + uuid.uuid4().hex[:12]
    log = open(os.path.join(run_dir, "shmschedd.log"), "w")
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "shmschedd"), "--runtime-dir=" + run_dir, "--segment=" + segment,
         "--plugin-dir=" + plugin_dir, "--max-payload-bytes=1024", "--idle-spin-us=0",
         "--metrics-listen=off", "--journal-dir=" + os.path.join(run_dir, "journal")],
        stdout=log, stderr=subprocess.STDOUT)
    ingress = f"ipc://{run_dir}/ingress.sock"
    events = f"ipc://{run_dir}/events.sock"
    client = shmsched.Client(ingress, events=events, timeout=1.0)
    deadline = time.monotonic() + 20
    while True:
        try:
            client.stats()
            break
        except shmsched.Timeout:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("shmschedd did not start: " +
                                   open(os.path.join(run_dir, "shmschedd.log")).read())
    client.close()
    yield ingress, events
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    log.close()
    shutil.rmtree(run_dir, ignore_errors=True)
    try:
        os.unlink("/dev/shm/" + segment)
    except FileNotFoundError:
        pass


def collect_events(client, types):
    """Events (of `types`) gathered by a thread into a queue, once the subscription is active:
    probes with rejected submits (an id too long) until one's ExecutionRejected arrives."""
    q = queue.Queue()

    def run():
        for event in client_events.events(types=types + ["ExecutionRejected"], timeout=30):
            q.put(event)

    client_events = shmsched.Client(client._ingress._endpoint, events=client._events_endpoint)
    threading.Thread(target=run, daemon=True).start()
    probe = "p" * 70
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with pytest.raises(shmsched.Invalid):
            client.submit("probe", b"x", execution_id=probe)
        try:
            while True:
                event = q.get(timeout=0.2)
                if event["type"] == "ExecutionRejected" and event["execution_id"] == probe:
                    return q
        except queue.Empty:
            continue
    raise RuntimeError("the events subscription never became active")


def test_submit_status_list_stats_cancel(daemon):
    ingress, events = daemon
    c = shmsched.Client(ingress, events=events)
    r = c.submit("alice", b"print(1)", priority="high", execution_id="py-1",
                 metadata={"lang": "python"})
    assert r["execution_id"] == "py-1"
    assert r["queue_position"] == 0
    st = c.status("py-1")
    assert st["user_id"] == "alice" and st["priority"] == "high"
    assert st["state"] in ("queued", "dispatched")
    assert any(e["execution_id"] == "py-1" for e in c.list(user_id="alice"))
    stats = c.stats()
    assert stats["counters"]["submitted"] >= 1
    assert "queue_depth" in stats
    # A generated id when none is given.
    assert len(c.submit("alice", "text payloads are sent as bytes")["execution_id"]) == 36
    c.cancel("py-1", reason="changed my mind")
    assert c.status("py-1")["state"] == "cancelled"


def test_errors_are_typed_exceptions_with_their_code(daemon):
    ingress, _ = daemon
    c = shmsched.Client(ingress)
    c.submit("bob", b"x", execution_id="dup")
    with pytest.raises(shmsched.Duplicate) as e:
        c.submit("bob", b"x", execution_id="dup")
    assert e.value.code == "duplicate" and e.value.message
    with pytest.raises(shmsched.PayloadTooLarge):
        c.submit("bob", b"x" * 4096)
    with pytest.raises(shmsched.Invalid):
        c.submit("bob", b"x", priority="urgent")
    with pytest.raises(shmsched.NotFound):
        c.status("never-submitted")
    with pytest.raises(shmsched.Error):  # the base class catches them all
        c.cancel("never-submitted")


def test_durability_disk_is_answered_once_on_disk(daemon):
    ingress, _ = daemon
    c = shmsched.Client(ingress)
    r = c.submit("bob", b"x", execution_id="durable", durability="disk")
    assert r["execution_id"] == "durable"
    s = c.stats()
    assert s["journal"]["ok"] and s["journal"]["durable_lsn"] >= 1
    with pytest.raises(shmsched.Invalid):
        c.submit("bob", b"x", durability="tape")


def test_events_and_a_worker(daemon):
    ingress, events = daemon
    c = shmsched.Client(ingress, events=events)
    q = collect_events(c, ["ExecutionAccepted", "ExecutionCompleted"])
    w = shmsched.Worker(ingress, events, "py-worker", capabilities=["py"], capacity=2)
    assert w.worker_number
    c.submit("carol", b"sleep:0", execution_id="task-1", required_capabilities=["py"])
    task = next(w.tasks(timeout=10))
    assert task["execution_id"] == "task-1" and task["payload"] == b"sleep:0"
    assert w.claim("task-1") is False  # claimed already (by this worker): exactly one win
    w.complete(task, exit_code=0)
    seen = {}
    while "task-1" not in seen.get("ExecutionCompleted", []):
        event = q.get(timeout=10)
        seen.setdefault(event["type"], []).append(event["execution_id"])
    assert "task-1" in seen["ExecutionAccepted"]
    completed = c.status("task-1")
    assert completed["state"] == "completed"
    assert completed["worker_id"] == "py-worker"
    w.close()
    assert c.stats()["workers"] == 0
