"""Availability of a backend the server can live without (a cache, Redis)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)

MAX_REASON = 160


def describe_error(err: BaseException) -> str:
    """Return a short, secret-free account of a backend failure."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    name = type(err).__name__
    return f"{name}: {text[:MAX_REASON]}" if text else name


class Health:
    """Track whether a backend works; log an outage once and its recovery once."""

    def __init__(
        self,
        what: str,
        retry_after: float,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self.what = what
        self.retry_after = retry_after
        self.reason = ""
        self._down_since: float | None = None
        self._next_try = 0.0
        self._on_change = on_change

    @property
    def up(self) -> bool:
        return self._down_since is None

    def usable(self) -> bool:
        """Say whether to use the backend now: it works, or it is time to retry."""
        return self._down_since is None or time.monotonic() >= self._next_try

    def failed(self, err: BaseException) -> None:
        """Record a failure; the first one of an outage is logged."""
        now = time.monotonic()
        self._next_try = now + self.retry_after
        self.reason = describe_error(err)
        if self._down_since is not None:
            return
        self._down_since = now
        log.warning(
            "%s is unavailable (%s); serving without it, retrying every %g s",
            self.what,
            self.reason,
            self.retry_after,
        )
        if self._on_change:
            self._on_change(False)

    def worked(self) -> None:
        """Record a success; the first one after an outage is logged."""
        if self._down_since is None:
            return
        seconds = time.monotonic() - self._down_since
        self._down_since = None
        log.info("%s is back after %.0f s", self.what, seconds)
        if self._on_change:
            self._on_change(True)
