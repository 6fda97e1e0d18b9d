#!/usr/bin/env python3
"""An example shmsched worker on pyzmq and msgpack only (Debian: python3-zmq, python3-msgpack).

It registers with its capabilities, listens for the TaskPush messages meant for it on the
zeromq transport's PUB socket (topic "TaskPush.<worker_id>"), claims each one (exactly one
claimant wins), runs it, and reports completion; it sends heartbeats meanwhile. Running a task
here means: the payload is text; "sleep:<ms>" sleeps that long, "fail:<text>" fails with retry,
anything else is echoed. Replace run() with your own work.

    shmsched_worker.py --worker-id w1 --capabilities py,gpu \\
        --ingress ipc:///run/shmsched/ingress.sock --events ipc:///run/shmsched/events.sock
"""
import argparse
import sys
import threading
import time

import msgpack
import zmq


class Ingress:
    """A REQ connection to shmschedd's ingress (one request at a time, guarded by a lock)."""

    def __init__(self, ctx, endpoint, timeout_ms):
        self._ctx, self._endpoint, self._timeout_ms = ctx, endpoint, timeout_ms
        self._lock = threading.Lock()
        self._socket = None

    def call(self, **request):
        with self._lock:
            if self._socket is None:
                self._socket = self._ctx.socket(zmq.REQ)
                self._socket.setsockopt(zmq.LINGER, 0)
                self._socket.setsockopt(zmq.RCVTIMEO, self._timeout_ms)
                self._socket.connect(self._endpoint)
            try:
                self._socket.send(msgpack.packb(request, use_bin_type=True))
                return msgpack.unpackb(self._socket.recv(), raw=False)
            except zmq.Again:
                # A REQ socket that timed out cannot send again: start over.
                self._socket.close()
                self._socket = None
                raise TimeoutError(f"shmschedd did not answer {request['op']} in time")


def run(payload: bytes):
    """The work: returns (exit_code, None) or (None, error text) for a failure to retry."""
    text = payload.decode("utf-8", "replace")
    if text.startswith("sleep:"):
        time.sleep(int(text[6:]) / 1000)
        return 0, None
    if text.startswith("fail:"):
        return None, text[5:]
    return 0, None


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker-id", required=True)
    p.add_argument("--capabilities", default="", help="comma-separated")
    p.add_argument("--capacity", type=int, default=1, help="tasks run at once")
    p.add_argument("--ingress", required=True, help="shmschedd's ingress endpoint")
    p.add_argument("--events", required=True, help="the zeromq transport's PUB endpoint")
    p.add_argument("--timeout-ms", type=int, default=5000, help="per request")
    args = p.parse_args()
    capabilities = [c for c in args.capabilities.split(",") if c]

    ctx = zmq.Context()
    ingress = Ingress(ctx, args.ingress, args.timeout_ms)
    # Subscribe before registering: pushes follow the registration at once. A ZeroMQ topic is
    # a prefix ("TaskPush.w1" also matches "TaskPush.w10"): the body's worker_id decides.
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, f"TaskPush.{args.worker_id}".encode())
    sub.connect(args.events)

    reply = ingress.call(op="register_worker", worker_id=args.worker_id,
                         capabilities=capabilities, capacity=args.capacity,
                         metadata={"language": "python"})
    if not reply.get("ok"):
        print(f"register_worker refused: {reply.get('error')}: {reply.get('message')}",
              file=sys.stderr)
        return 2
    interval = reply.get("heartbeat_interval_ms", 10000) / 1000
    print(f"registered {args.worker_id} ({','.join(capabilities) or 'no capabilities'})",
          flush=True)

    stop = threading.Event()

    def heartbeat():
        while not stop.wait(interval):
            try:
                r = ingress.call(op="heartbeat", worker_id=args.worker_id)
                if not r.get("ok"):
                    # The supervisor forgot us (it restarted, or we were silent too long).
                    ingress.call(op="register_worker", worker_id=args.worker_id,
                                 capabilities=capabilities, capacity=args.capacity)
            except TimeoutError as e:
                print(f"heartbeat: {e}", file=sys.stderr, flush=True)

    threading.Thread(target=heartbeat, daemon=True).start()
    slots = threading.Semaphore(args.capacity)

    def work(task):
        try:
            execution_id, attempt = task["execution_id"], task["attempt"]
            claim = ingress.call(op="claim", worker_id=args.worker_id, execution_id=execution_id)
            if not claim.get("ok") or not claim.get("claimed"):
                return  # another worker has it (or it is gone)
            print(f"claimed {execution_id} attempt {attempt}", flush=True)
            exit_code, error = run(task.get("payload", b""))
            if error is None:
                ingress.call(op="complete", execution_id=execution_id, worker_id=args.worker_id,
                             attempt=attempt, exit_code=exit_code)
            else:
                ingress.call(op="fail", execution_id=execution_id, worker_id=args.worker_id,
                             attempt=attempt, error=error, retry=True)
        except TimeoutError as e:
            print(f"{e}", file=sys.stderr, flush=True)
        finally:
            slots.release()

    try:
        while True:
            _topic, body = sub.recv_multipart()
            task = msgpack.unpackb(body, raw=False)
            if task.get("worker_id") != args.worker_id:
                continue
            slots.acquire()
            threading.Thread(target=work, args=(task,), daemon=True).start()
    except KeyboardInterrupt:
        pass
    finally:
        stop.set()
        try:
            ingress.call(op="unregister_worker", worker_id=args.worker_id)
        except TimeoutError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
