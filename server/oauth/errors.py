"""OAuth errors (RFC 6749 section 5.2): one base class; each subclass sets its code and status.

``tessera.server.http.answering`` turns them into JSON bodies with ``Cache-Control: no-store``. A description
must never carry a secret or a token; it is shown to the client as it is.
"""

from __future__ import annotations


class OAuthError(Exception):
    error = "invalid_request"
    status = 400

    def __init__(self, description: str) -> None:
        super().__init__(description)
        self.description = description

    def headers(self) -> dict[str, str]:
        return {}


class InvalidRequest(OAuthError):
    error = "invalid_request"


class RequestTooLarge(OAuthError):
    error = "invalid_request"
    status = 413


class RequestTimeout(OAuthError):
    """The body did not arrive within the client timeout; the connection is closed after this."""

    error = "invalid_request"
    status = 408

    def headers(self) -> dict[str, str]:
        return {"Connection": "close"}


class InvalidClient(OAuthError):
    """RFC 6749 section 5.2: 401, and WWW-Authenticate naming the scheme the client should use."""

    error = "invalid_client"
    status = 401

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Basic realm="tessera", charset="UTF-8"'}


class InvalidGrant(OAuthError):
    error = "invalid_grant"


class UnauthorizedClient(OAuthError):
    error = "unauthorized_client"


class UnsupportedGrantType(OAuthError):
    error = "unsupported_grant_type"


class UnsupportedTokenType(OAuthError):
    """RFC 7009 section 2.2.1."""

    error = "unsupported_token_type"


class InvalidScope(OAuthError):
    error = "invalid_scope"


class InvalidTarget(OAuthError):
    """RFC 8707 section 2: the requested resource is invalid, unknown or not allowed."""

    error = "invalid_target"


class TooManyAttempts(OAuthError):
    error = "too_many_requests"
    status = 429

    def __init__(self, description: str, retry_after: int) -> None:
        super().__init__(description)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class TemporarilyUnavailable(OAuthError):
    error = "temporarily_unavailable"
    status = 503

    def __init__(self, description: str = "the service is temporarily unavailable", retry_after: int = 5) -> None:
        super().__init__(description)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class NotFound(OAuthError):
    error = "not_found"
    status = 404


class MethodNotAllowed(OAuthError):
    error = "invalid_request"
    status = 405


class ServerError(OAuthError):
    error = "server_error"
    status = 500
