"""Typed errors, and the one place that turns them into text for MISP."""

from __future__ import annotations


class EnrichError(Exception):
    """Base of every error that becomes an answer to MISP."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        # The message may be rewritten after construction (secrets scrubbed):
        # every rendering must show the rewritten text.
        return self.message

    @property
    def outcome(self) -> str:
        """Return a short label for metrics."""
        return "error"


class BadRequest(EnrichError):
    """The body MISP sent cannot be read as a query."""

    @property
    def outcome(self) -> str:
        return "bad_request"


class UnknownModule(BadRequest):
    """The query names a module this server does not have."""


class UnsupportedType(BadRequest):
    """The module does not handle this attribute type."""


class InvalidValue(BadRequest):
    """The attribute value is not valid for its type."""


class ConfigError(EnrichError):
    """A module setting is missing or has a bad value."""

    @property
    def outcome(self) -> str:
        return "config_error"


class ModuleFailed(EnrichError):
    """A module broke while building its answer."""

    @property
    def outcome(self) -> str:
        return "internal_error"


class PolicyRefused(EnrichError):
    """The observable may not be sent to this module's source."""

    @property
    def outcome(self) -> str:
        return "refused"


class UpstreamError(EnrichError):
    """A source failed; `source` names it in every message."""

    reason = "failed"

    def __init__(self, source: str, detail: str = "") -> None:
        self.source = source
        self.detail = detail
        text = f"{source}: {self.reason}"
        if detail:
            text = f"{text}: {detail}"
        super().__init__(text)

    @property
    def outcome(self) -> str:
        return "upstream_" + type(self).__name__.lower()


class AuthFailed(UpstreamError):
    """The source refused the API key (401/403)."""

    reason = "the API key was refused"


class Forbidden(UpstreamError):
    """The key is valid but lacks access to this endpoint (403)."""

    reason = "access denied for this API key"


class NotFound(UpstreamError):
    """The source does not know the indicator (404)."""

    reason = "not found"


class RateLimited(UpstreamError):
    """The source or the local limiter refused the call for now."""

    reason = "rate limited"

    def __init__(
        self, source: str, detail: str = "", retry_after: float | None = None
    ) -> None:
        self.retry_after = retry_after
        super().__init__(source, detail)


class Unavailable(UpstreamError):
    """The source answered 5xx or could not be reached."""

    reason = "unavailable"


class UpstreamTimeout(UpstreamError):
    """The source did not answer in time."""

    reason = "timed out"


class BadResponse(UpstreamError):
    """The source answered something that cannot be parsed."""

    reason = "sent a malformed answer"


class Rejected(UpstreamError):
    """The source refused the request itself (a 4xx other than auth or 404)."""

    reason = "refused the request"


class CircuitOpen(UpstreamError):
    """Recent failures make the source skipped until a probe succeeds."""

    reason = "temporarily disabled after repeated failures"


class DeadlineExceeded(UpstreamError):
    """The whole query ran past its deadline."""

    reason = "timed out"


def shown(value: object, limit: int = 80) -> str:
    """Quote a value for an error message, cut short when it is long."""
    text = str(value)
    if len(text) > limit:
        text = text[:limit] + f"... ({len(text)} characters)"
    return f"'{text}'"


def error_body(exc: BaseException) -> dict[str, object]:
    """Return the answer MISP gets for an error: text plus empty results."""
    if isinstance(exc, EnrichError):
        return {"error": exc.message, "results": []}
    return {
        "error": f"internal error ({type(exc).__name__}); the server log has details",
        "results": [],
    }
