"""A client for shmsched (docs/protocol.md), on pyzmq and msgpack only.

    from shmsched import Client
    c = Client("ipc:///run/shmsched/ingress.sock", events="ipc:///run/shmsched/events.sock")
    eid = c.submit("alice", b"print('hi')", priority="high")["execution_id"]
    print(c.status(eid)["state"])
    for event in c.events(types=["ExecutionCompleted"], timeout=5.0):
        ...

Errors the supervisor answers are exceptions: `Error` and one subclass per error code
(`QueueFull`, `UserLimit`, `Duplicate`, ...), each with `.code` and `.message`.
"""
from .client import Client, Worker
from .errors import (Error, QueueFull, UserLimit, Duplicate, PayloadTooLarge, Invalid,
                     Unauthorized, NotFound, Finished, NotOwner, Unavailable, Timeout)

__all__ = ["Client", "Worker", "Error", "QueueFull", "UserLimit", "Duplicate", "PayloadTooLarge",
           "Invalid", "Unauthorized", "NotFound", "Finished", "NotOwner", "Unavailable", "Timeout"]
