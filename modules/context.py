"""What a module gets besides its observable and config."""

from __future__ import annotations

from dataclasses import dataclass, field

from modules.results import Answer
from modules.upstream import Source


@dataclass
class Context:
    """One query's context: its source, deadline, shape and references."""

    source: Source
    reference_uuid: str | None
    hover: bool
    event_id: str | None = None
    data: str | None = None
    # The enriched value and its parts, which MISP already holds.
    enriched: frozenset[str] = field(default_factory=frozenset)

    def answer(self) -> Answer:
        """Return an empty answer whose objects reference the enriched item."""
        return Answer(self.reference_uuid, self.enriched)
