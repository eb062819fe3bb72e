"""Domain errors of the service, each with its HTTP status and a code clients can branch on.

Messages say what was wrong with the request, never how the server is built: no paths, no tracebacks.
"""

from __future__ import annotations

from typing import Optional

from facenas.errors import FacenasError


class ServiceError(Exception):
    """`field` names the upload or form field at fault, where there is one, so that a client sending several
    images can tell which one was refused without parsing the message."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def body(self, request_id: Optional[str] = None) -> dict:
        return error_body(self.code, self.message, self.field, request_id)


def error_body(code: str, message: str, field: Optional[str] = None, request_id: Optional[str] = None) -> dict:
    """`{"error": {...}}`: the one shape of every error the service answers (the request id lets an operator find
    the request in the logs)."""
    detail = {"code": code, "message": message}
    if field is not None:
        detail["field"] = field
    if request_id is not None:
        detail["request_id"] = request_id
    return {"error": detail}


class ImageRejected(ServiceError):
    status = 422
    code = "invalid_image"


class ImageTooLarge(ServiceError):
    status = 413
    code = "image_too_large"


class NoFaceFound(ServiceError):
    status = 422
    code = "no_face_found"


class NotFound(ServiceError):
    status = 404
    code = "not_found"


class Conflict(ServiceError):
    status = 409
    code = "conflict"


class Unauthorized(ServiceError):
    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    status = 403
    code = "forbidden"


class RateLimited(ServiceError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PayloadTooLarge(ServiceError):
    status = 413
    code = "payload_too_large"


class GalleryError(Exception):
    """The gallery cannot be used with this model (raised at start, not per request)."""


class StartupError(FacenasError):
    """The service cannot start here (the port is taken, the address is not this machine's): found before the model
    loads, so `facenas serve` says it in one line."""
