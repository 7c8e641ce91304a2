"""The error hierarchy the HTTP layer maps to status codes.

    StackwatchError
    ├── BadRequest          400: the input could not be decoded or parsed
    │   └── QuerySyntaxError    400 with the position of the error in the query
    ├── Unauthorized        401: no or unknown token
    ├── Forbidden           403: the token's role may not do this
    ├── NotFound            404
    ├── PayloadTooLarge     413
    ├── UnsupportedMediaType 415
    ├── Overloaded          429 with Retry-After: the ingest buffer is full
    └── ConfigError         a bad setting; stops start-up naming the key and value
"""

from __future__ import annotations


class StackwatchError(Exception):
    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(StackwatchError):
    status_code = 400


class QuerySyntaxError(BadRequest):
    def __init__(self, message: str, position: int | None = None) -> None:
        if position is not None:
            message = f"{message} (at position {position})"
        super().__init__(message)
        self.position = position


class Unauthorized(StackwatchError):
    status_code = 401


class Forbidden(StackwatchError):
    status_code = 403


class NotFound(StackwatchError):
    status_code = 404


class PayloadTooLarge(StackwatchError):
    status_code = 413


class UnsupportedMediaType(StackwatchError):
    status_code = 415


class Overloaded(StackwatchError):
    status_code = 429

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ConfigError(StackwatchError):
    pass
