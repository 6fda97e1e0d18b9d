"""The protocol's error codes as exception types (docs/protocol.md, "Operations")."""


class Error(Exception):
    """An operation the supervisor refused: `code` is the protocol's error code."""

    code = "error"

    def __init__(self, message, code=None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def __str__(self):
        return f"{self.code}: {self.message}"


class QueueFull(Error):
    code = "queue_full"


class UserLimit(Error):
    code = "user_limit"


class Duplicate(Error):
    code = "duplicate"


class PayloadTooLarge(Error):
    code = "payload_too_large"


class Invalid(Error):
    code = "invalid"


class Unauthorized(Error):
    code = "unauthorized"


class NotFound(Error):
    code = "not_found"


class Finished(Error):
    code = "finished"


class NotOwner(Error):
    code = "not_owner"


class Unavailable(Error):
    code = "unavailable"


class Timeout(Error):
    """The supervisor did not answer in time (not a protocol code)."""

    code = "timeout"


_BY_CODE = {cls.code: cls for cls in (QueueFull, UserLimit, Duplicate, PayloadTooLarge, Invalid,
                                       Unauthorized, NotFound, Finished, NotOwner, Unavailable)}


def error_for(reply):
    """The exception for an `ok: false` reply (an unknown code is a plain Error)."""
    code = reply.get("error", "error")
    cls = _BY_CODE.get(code, Error)
    return cls(reply.get("message", ""), code=code)
