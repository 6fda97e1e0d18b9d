"""Metrics and the dashboard against a real shmschedd (started here), with independent readers:
prometheus_client's parser for /metrics, and headless Chromium (through Selenium and
chromedriver) for the dashboard. Run by ctest (labels "python" and "browser"):
SHMSCHED_BIN_DIR and SHMSCHED_PLUGIN_DIR name the build's, SHMSCHED_ARTIFACT_DIR is where the
dashboard's screenshot goes."""
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
import uuid

import pytest
from prometheus_client.parser import text_string_to_metric_families

import shmsched

CAPACITY = 3


def start_daemon(extra=(), open_to_all=False):
    """shmschedd on a free port (metrics_listen ...:0): (ingress endpoint, base URL, cleanup).
    open_to_all: every local user may reach the ingress socket (identity alone decides)."""
    bin_dir = os.environ["SHMSCHED_BIN_DIR"]
    plugin_dir = os.environ["SHMSCHED_PLUGIN_DIR"]
    run_dir = tempfile.mkdtemp(prefix="shmsched-obs-")
    if open_to_all:
        os.chmod(run_dir, 0o755)
    segment = "shmsched-obs-" + uuid.uuid4().hex[:12]
    log_path = os.path.join(run_dir, "shmschedd.log")
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [os.path.join(bin_dir, "shmschedd"), "--runtime-dir=" + run_dir, "--segment=" + segment,
         "--plugin-dir=" + plugin_dir, "--idle-spin-us=0", "--metrics-listen=127.0.0.1:0",
         f"--max-active-executions={CAPACITY}", *extra],
        stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=(lambda: os.umask(0)) if open_to_all else None)
    # The bound port is in the start-up log.
    url = None
    deadline = time.monotonic() + 20
    while url is None:
        found = re.search(r"metrics on http://([0-9.:]+)/metrics", open(log_path).read())
        if found:
            url = "http://" + found.group(1)
        elif proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("shmschedd did not start: " + open(log_path).read())
        else:
            time.sleep(0.05)
    ingress = f"ipc://{run_dir}/ingress.sock"
    wait_until(lambda: get(url + "/healthz")[0] == 200, "healthz to answer 200")

    def cleanup():
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(run_dir, ignore_errors=True)
        try:
            os.unlink("/dev/shm/" + segment)
        except FileNotFoundError:
            pass
    return ingress, url, cleanup


@pytest.fixture()
def daemon():
    """Yields (ingress endpoint, base URL) of a shmschedd with the defaults (read-only)."""
    ingress, url, cleanup = start_daemon()
    yield ingress, url
    cleanup()


@pytest.fixture()
def daemon_with_cancel():
    ingress, url, cleanup = start_daemon(["--dashboard-cancel=true"], open_to_all=True)
    yield ingress, url
    cleanup()


def get(url, method="GET", body=None, headers=None):
    request = urllib.request.Request(url, method=method, data=body, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type", "")
    except urllib.error.URLError:
        return None, "", ""


def wait_until(condition, what, seconds=20):
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        time.sleep(0.02)


def scrape(url):
    """{family name: (type, {(sample name, frozenset(labels)): value})} by prometheus_client."""
    status, text, content_type = get(url + "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {}
    for f in text_string_to_metric_families(text):
        families[f.name] = (f.type, {(s.name, frozenset(s.labels.items())): s.value
                                     for s in f.samples})
    return families


def value(families, family, sample=None, **labels):
    kind, samples = families[family]
    if sample is None:
        sample = family + "_total" if kind == "counter" else family
    return samples[(sample, frozenset(labels.items()))]


def known_workload(client):
    """10 accepted (4 of bob at high first, then 6 of alice at normal), one duplicate refused,
    one completed, one failed for good, two cancelled while queued."""
    for i in range(10):
        user, priority = ("bob", "high") if i < 4 else ("alice", "normal")
        client.submit(user, b"x", priority=priority, execution_id=f"w-{i}")
    with pytest.raises(shmsched.Duplicate):
        client.submit("alice", b"x", execution_id="w-0")
    # w-0, w-1 and w-2 went at once (capacity 3).
    wait_until(lambda: client.status("w-2")["state"] == "dispatched", "w-2 dispatched")
    client.call("complete", execution_id="w-0", exit_code=0)
    client.call("fail", execution_id="w-1", error="oom", retry=False)
    client.cancel("w-8")
    client.cancel("w-9")
    # Then w-3 (high) and w-4 take the two places freed: dispatched 5 in all; w-5, w-6 and w-7
    # (alice, normal) stay queued; w-2, w-3 (bob) and w-4 (alice) are active.


def test_metrics_after_a_known_workload(daemon):
    ingress, url = daemon
    client = shmsched.Client(ingress)
    known_workload(client)
    wait_until(lambda: value(scrape(url), "shmsched_executions_dispatched") == 5,
               "five dispatches in the metrics")
    m = scrape(url)
    assert m["shmsched_submissions"][0] == "counter"
    assert value(m, "shmsched_submissions", "shmsched_submissions_total") == 10
    assert value(m, "shmsched_submissions_rejected", "shmsched_submissions_rejected_total",
                 reason="duplicate") == 1
    assert value(m, "shmsched_submissions_rejected", "shmsched_submissions_rejected_total",
                 reason="queue_full") == 0
    for name, expected in [("dispatched", 5), ("completed", 1), ("failed", 1),
                           ("cancelled", 2), ("retried", 0), ("expired", 0)]:
        family = "shmsched_executions_" + name
        assert m[family][0] == "counter", family
        assert value(m, family, family + "_total") == expected, family
    assert m["shmsched_active_executions"][0] == "gauge"
    assert value(m, "shmsched_active_executions") == CAPACITY
    assert value(m, "shmsched_max_active_executions") == CAPACITY
    assert value(m, "shmsched_queue_depth", priority="normal") == 3
    assert value(m, "shmsched_queue_depth", priority="high") == 0
    # The oldest waits are as fresh as the loop's last look at the heads (within 0.15 s).
    wait_until(lambda: value(scrape(url), "shmsched_queue_oldest_wait_seconds",
                             priority="normal") > 0, "the oldest normal wait")
    wait_until(lambda: value(scrape(url), "shmsched_queue_oldest_wait_seconds",
                             priority="high") == 0, "no high wait (none queued)")
    for histogram in ["shmsched_queue_wait_seconds", "shmsched_submit_to_dispatch_seconds"]:
        assert m[histogram][0] == "histogram"
        assert value(m, histogram, histogram + "_count") == 5, histogram
        assert value(m, histogram, histogram + "_bucket", le="+Inf") == 5, histogram
        assert value(m, histogram, histogram + "_sum") > 0, histogram
    (_, labels), one = next(iter(m["shmsched_build_info"][1].items()))
    assert one == 1 and re.fullmatch(r"\d+\.\d+\.\d+", dict(labels)["version"])

    # The dashboard's state holds the same figures as `stats`.
    stats = client.stats()
    status, body, content_type = get(url + "/api/state")
    assert status == 200 and content_type == "application/json"
    state = json.loads(body)
    for key in ["active", "capacity", "queue_depth", "workers", "waiting_for_workers"]:
        assert state[key] == stats[key], key
    volatile = {"ingress_requests"}  # our own requests count
    for key, v in stats["counters"].items():
        if key not in volatile:
            assert state["counters"][key] == v, key
    assert {u["user_id"]: (u["queued"], u["active"]) for u in state["top_users"]} == {
        "alice": (3, 1), "bob": (0, 2)}
    # The loop publishes its recent events twice a second.
    wait_until(lambda: {e["execution_id"] for e in json.loads(get(url + "/api/state")[1])
                        ["recent_events"]} >= {"w-0", "w-1", "w-4"}, "the recent events")


def test_http_answers_and_refusals(daemon):
    _, url = daemon
    assert get(url + "/healthz")[:2] == (200, "ok\n")
    status, body, content_type = get(url + "/")
    assert status == 200 and content_type.startswith("text/html") and "EventSource" in body
    assert get(url + "/nothing-here")[0] == 404
    assert get(url + "/metrics", method="POST")[0] == 405  # read-only
    assert get(url + "/metrics", method="DELETE")[0] == 405


def headless_chromium():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for a in ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--window-size=1400,1150"]:
        options.add_argument(a)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def page_text(browser, element_id):
    """An element's text, read through script: the page rebuilds its tables every second, and an
    element found a moment ago may be gone."""
    return browser.execute_script(
        "const e = document.getElementById(arguments[0]); return e ? e.textContent : null;",
        element_id)


def test_dashboard_in_headless_chromium(daemon):
    from selenium.webdriver.support.ui import WebDriverWait

    ingress, url = daemon
    browser = headless_chromium()
    try:
        browser.get(url + "/")
        text = lambda element_id: page_text(browser, element_id)
        WebDriverWait(browser, 20).until(lambda b: text("conn") == "live")
        # A workload while the page is open: it must follow live.
        client = shmsched.Client(ingress)
        known_workload(client)
        for i in range(6):
            client.submit(f"user-{i % 3}", b"x", priority="low")
        wait_until(lambda: client.stats()["counters"]["dispatched"] == 5, "five dispatches")
        stats = client.stats()
        expected = {
            "counter-submitted": stats["counters"]["submitted"],
            "counter-dispatched": stats["counters"]["dispatched"],
            "counter-completed": stats["counters"]["completed"],
            "counter-failed": stats["counters"]["failed"],
            "counter-cancelled": stats["counters"]["cancelled"],
            "counter-rejected_duplicate": stats["counters"]["rejected_duplicate"],
            "active": stats["active"],
            "capacity": stats["capacity"],
            "depth-normal": stats["queue_depth"]["normal"],
            "depth-low": stats["queue_depth"]["low"],
        }
        assert expected["counter-submitted"] == 16 and expected["depth-low"] == 6
        shown = {}

        def page_matches(_):
            shown.update({k: text(k) for k in expected})
            return all(shown[k] == f"{v:,}" for k, v in expected.items())

        try:
            WebDriverWait(browser, 20).until(page_matches)
        except Exception:
            raise AssertionError(f"the page shows {shown}, stats says {expected}")
        users = text("users")
        assert "alice" in users and "user-0" in users
        assert "w-4" in text("events")
        artifacts = os.environ.get("SHMSCHED_ARTIFACT_DIR", tempfile.gettempdir())
        os.makedirs(artifacts, exist_ok=True)
        shot = os.path.join(artifacts, "dashboard.png")
        assert browser.save_screenshot(shot)
        with open(shot, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    finally:
        browser.quit()


CANCEL = """
import json, sys, urllib.error, urllib.request
request = urllib.request.Request(sys.argv[1] + "/api/cancel", method="POST",
    data=json.dumps({"execution_id": sys.argv[2]}).encode(),
    headers={"Content-Type": "application/json"})
try:
    with urllib.request.urlopen(request, timeout=10) as r:
        print(r.status, r.read().decode())
except urllib.error.HTTPError as e:
    print(e.code, e.read().decode())
"""


def cancel_as(user, url, execution_id):
    """POSTs a cancel from a process of `user` (None: this one): (status, reply)."""
    command = ["/usr/bin/python3", "-c", CANCEL, url, execution_id]
    if user:
        command = ["runuser", "-u", user, "--"] + command
    out = subprocess.run(command, capture_output=True, text=True, timeout=30, check=True).stdout
    status, body = out.split(" ", 1)
    return int(status), json.loads(body)


def test_the_dashboard_is_read_only_by_default(daemon):
    ingress, url = daemon
    client = shmsched.Client(ingress)
    client.submit("alice", b"x", priority="low", execution_id="ro-1")
    assert cancel_as(None, url, "ro-1")[0] == 403
    assert json.loads(get(url + "/api/state")[1])["cancel_enabled"] is False
    assert client.status("ro-1")["state"] in ("queued", "dispatched")


def test_cancel_from_the_dashboard_follows_the_ingress_identity_rules(daemon_with_cancel,
                                                                       local_user):
    ingress, url = daemon_with_cancel
    client = shmsched.Client(ingress)
    # Fill the capacity, so that what follows stays queued.
    for i in range(CAPACITY):
        client.submit("filler", b"x", execution_id=f"fill-{i}")
    client.submit("bob", b"x", execution_id="bobs")
    client.submit(local_user, b"x", execution_id="mine")
    # Another local user may cancel only its own executions, as on the ingress.
    status, reply = cancel_as(local_user, url, "bobs")
    assert (status, reply["error"]) == (403, "unauthorized"), reply
    assert client.status("bobs")["state"] == "queued"
    status, reply = cancel_as(local_user, url, "mine")
    assert (status, reply) == (200, {"ok": True})
    assert client.status("mine")["state"] == "cancelled"
    # Root is trusted: it cancels anyone's.
    assert cancel_as(None, url, "bobs") == (200, {"ok": True})
    assert client.status("bobs")["state"] == "cancelled"
    assert cancel_as(None, url, "nobody-has-this")[0] == 404
    # What a page of another origin could make a browser send is refused.
    form = get(url + "/api/cancel", method="POST", body=b"execution_id=fill-0",
               headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert form[0] == 415
    foreign = get(url + "/api/cancel", method="POST", body=b'{"execution_id": "fill-0"}',
                  headers={"Content-Type": "application/json", "Origin": "http://evil.example"})
    assert foreign[0] == 403
    assert get(url + "/api/cancel", method="POST", body=b"{not json",
               headers={"Content-Type": "application/json"})[0] == 400
    assert get(url + "/api/cancel")[0] == 405
    assert client.status("fill-0")["state"] == "dispatched"
    assert json.loads(get(url + "/api/state")[1])["cancel_enabled"] is True


def test_cancel_button_in_headless_chromium(daemon_with_cancel):
    """The page's own form, as a browser sends it (with the page's Origin)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    ingress, url = daemon_with_cancel
    client = shmsched.Client(ingress)
    for i in range(CAPACITY):
        client.submit("filler", b"x", execution_id=f"fill-{i}")
    client.submit("bob", b"x", execution_id="from-the-page")
    browser = headless_chromium()
    try:
        browser.get(url + "/")
        WebDriverWait(browser, 20).until(
            lambda b: page_text(b, "conn") == "live" and
            b.find_element(By.ID, "cancel-panel").is_displayed())
        browser.find_element(By.ID, "cancel-id").send_keys("from-the-page")
        browser.find_element(By.CSS_SELECTOR, "#cancel-form button").click()
        WebDriverWait(browser, 20).until(lambda b: page_text(b, "cancel-result") != "")
        assert page_text(browser, "cancel-result") == "cancelled from-the-page"
        assert client.status("from-the-page")["state"] == "cancelled"
    finally:
        browser.quit()
