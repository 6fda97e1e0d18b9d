"""Client (producers, operators) and Worker (workers) over the ZeroMQ ingress and events."""
import threading
import time

import msgpack
import zmq

from .errors import Timeout, error_for


class _Ingress:
    """One REQ socket, one request at a time (a lock makes it safe to share between threads)."""

    def __init__(self, context, endpoint, timeout):
        self._context, self._endpoint, self._timeout_ms = context, endpoint, int(timeout * 1000)
        self._lock = threading.Lock()
        self._socket = None

    def call(self, op, **fields):
        request = {"op": op}
        request.update({k: v for k, v in fields.items() if v is not None})
        with self._lock:
            if self._socket is None:
                self._socket = self._context.socket(zmq.REQ)
                self._socket.setsockopt(zmq.LINGER, 0)
                self._socket.setsockopt(zmq.RCVTIMEO, self._timeout_ms)
                self._socket.connect(self._endpoint)
            try:
                self._socket.send(msgpack.packb(request, use_bin_type=True))
                reply = msgpack.unpackb(self._socket.recv(), raw=False)
            except zmq.Again:
                # A REQ socket that timed out cannot send again: the next call starts over.
                self._socket.close()
                self._socket = None
                raise Timeout(f"shmschedd did not answer '{op}' within {self._timeout_ms} ms")
        if not reply.get("ok"):
            raise error_for(reply)
        return reply

    def close(self):
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None


class Client:
    """Submit, cancel, status, list, stats, and the published events.

    `endpoint`: the ingress (e.g. "ipc:///run/shmsched/ingress.sock"); `events`: the zeromq
    transport's PUB endpoint (needed by events() only); `timeout`: seconds per request.
    """

    def __init__(self, endpoint, events=None, timeout=5.0, context=None):
        self._context = context or zmq.Context.instance()
        self._ingress = _Ingress(self._context, endpoint, timeout)
        self._events_endpoint = events

    def call(self, op, **fields):
        """Any operation: the reply map, or the error as an exception."""
        return self._ingress.call(op, **fields)

    def submit(self, user_id, payload, priority="normal", execution_id=None,
               required_capabilities=None, metadata=None, timeout_seconds=None, durability=None):
        """Returns {"execution_id", "queue_position"}; raises QueueFull, UserLimit, ...
        durability: "disk" answers only once the execution is synced to the supervisor's journal
        (it survives a reboot); "memory" once it is queued; None: the supervisor's default."""
        if isinstance(payload, str):
            payload = payload.encode()
        return self.call("submit", user_id=user_id, payload=payload, priority=priority,
                         execution_id=execution_id,
                         required_capabilities=required_capabilities, metadata=metadata,
                         timeout_seconds=timeout_seconds, durability=durability)

    def cancel(self, execution_id, reason=None):
        return self.call("cancel", execution_id=execution_id, reason=reason)

    def status(self, execution_id):
        return self.call("status", execution_id=execution_id)

    def list(self, state=None, user_id=None, limit=None):
        return self.call("list", state=state, user_id=user_id, limit=limit)["executions"]

    def stats(self):
        return self.call("stats")

    def events(self, types=None, timeout=None):
        """Yields published events (maps with "type") as they come; `types` filters by type
        (subscriptions are topic prefixes); stops after `timeout` seconds without one (None: never).
        A subscription misses what was published before it was active."""
        if self._events_endpoint is None:
            raise ValueError("Client(events=...) names the events endpoint")
        sub = self._context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        for t in types or [""]:
            sub.setsockopt(zmq.SUBSCRIBE, t.encode())
        sub.connect(self._events_endpoint)
        poller = zmq.Poller()
        poller.register(sub, zmq.POLLIN)
        try:
            while True:
                if not poller.poll(None if timeout is None else int(timeout * 1000)):
                    return
                _topic, body = sub.recv_multipart()
                event = msgpack.unpackb(body, raw=False)
                if types and event.get("type") not in types:
                    continue  # a prefix match of another type
                yield event
        finally:
            sub.close()

    def close(self):
        self._ingress.close()


class Worker:
    """A worker: registers, heartbeats from a thread, takes the pushes meant for it, claims,
    completes or fails. `tasks()` yields each pushed task this worker won the claim of."""

    def __init__(self, endpoint, events, worker_id, capabilities=(), capacity=1, metadata=None,
                 timeout=5.0, context=None, join_wait=0.2):
        self._context = context or zmq.Context.instance()
        self._ingress = _Ingress(self._context, endpoint, timeout)
        self.worker_id = worker_id
        self._registration = dict(worker_id=worker_id, capabilities=list(capabilities),
                                  capacity=capacity, metadata=metadata)
        # Subscribed before registering: pushes follow the registration at once.
        self._sub = self._context.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        self._sub.setsockopt(zmq.SUBSCRIBE, f"TaskPush.{worker_id}".encode())
        self._sub.connect(events)
        # A SUB socket receives only what is published after its subscription reached the
        # publisher ("slow joiner"): registering at once could miss the first pushes.
        time.sleep(join_wait)
        reply = self._ingress.call("register_worker", **self._registration)
        self.worker_number = reply.get("worker_number")
        self._interval = reply.get("heartbeat_interval_ms", 10000) / 1000
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, daemon=True)
        self._heartbeat.start()

    def _beat(self):
        while not self._stop.wait(self._interval):
            try:
                self._ingress.call("heartbeat", worker_id=self.worker_id)
            except Timeout:
                continue
            except Exception:  # forgotten (the supervisor restarted): register again
                try:
                    self._ingress.call("register_worker", **self._registration)
                except Exception:
                    pass

    def tasks(self, timeout=None):
        """Yields the TaskPush maps this worker claimed (payload, attempt, ...); stops after
        `timeout` seconds without a push (None: never)."""
        poller = zmq.Poller()
        poller.register(self._sub, zmq.POLLIN)
        while not self._stop.is_set():
            if not poller.poll(None if timeout is None else int(timeout * 1000)):
                return
            _topic, body = self._sub.recv_multipart()
            task = msgpack.unpackb(body, raw=False)
            # A topic is a prefix ("TaskPush.w1" also matches "TaskPush.w10").
            if task.get("worker_id") != self.worker_id:
                continue
            if self.claim(task["execution_id"]):
                yield task

    def claim(self, execution_id):
        """True when this worker won the claim (exactly one claimant does)."""
        return bool(self._ingress.call("claim", worker_id=self.worker_id,
                                       execution_id=execution_id).get("claimed"))

    def complete(self, task, exit_code=0):
        return self._ingress.call("complete", execution_id=task["execution_id"],
                                  worker_id=self.worker_id, attempt=task.get("attempt"),
                                  exit_code=exit_code)

    def fail(self, task, error, retry=True):
        return self._ingress.call("fail", execution_id=task["execution_id"],
                                  worker_id=self.worker_id, attempt=task.get("attempt"),
                                  error=error, retry=retry)

    def close(self, unregister=True):
        self._stop.set()
        self._heartbeat.join(timeout=5)
        if unregister:
            try:
                self._ingress.call("unregister_worker", worker_id=self.worker_id)
            except Exception:
                pass
        self._sub.close()
        self._ingress.close()
