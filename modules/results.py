"""Answers for MISP: objects from the misp-objects templates, or simplified."""

from __future__ import annotations

import ipaddress
import logging
from datetime import date, datetime
from typing import Any

import dateutil.parser
import orjson
from pymisp import AbstractMISP
from pymisp.exceptions import PyMISPError

from modules.errors import InvalidValue
from modules.objects import ProposedObject
from modules.observable import HASH_LENGTHS, normalise_hash, normalise_host

log = logging.getLogger(__name__)
ARPA = (".in-addr.arpa", ".ip6.arpa")
# MISP stores a value in a TEXT column of 64 KiB; longer ones fail to save.
MAX_VALUE = 60_000
NUMERIC_TYPES = frozenset({"counter", "float", "size-in-bytes", "integer", "port"})


def _plain(obj: Any) -> Any:
    if isinstance(obj, AbstractMISP):
        return obj.to_dict()
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def dumps(body: Any, *, indent: bool = False) -> bytes:
    """Serialise an answer (PyMISP objects included) with orjson."""
    option = orjson.OPT_INDENT_2 if indent else 0
    return orjson.dumps(body, default=_plain, option=option)


class Answer:
    """The objects and attributes one enrichment produces."""

    def __init__(
        self, reference_uuid: str | None, enriched: frozenset[str] = frozenset()
    ) -> None:
        self.reference_uuid = reference_uuid
        self.enriched = enriched
        self.objects: list[ProposedObject] = []
        self.attributes: list[dict[str, Any]] = []
        self.tags: list[str] = []
        self.notes: list[str] = []
        self.summary: str | None = None
        self.skipped = 0
        self.cut = 0

    def add_object(
        self,
        template: str,
        values: dict[str, Any] | None = None,
        *,
        relationship: str | None = "related-to",
        comment: str = "",
    ) -> ProposedObject:
        """Add an object from its template, referencing the enriched attribute.

        `values` maps each object relation to a value or a list of values;
        empty values are left out.
        """
        obj = ProposedObject(template, comment)
        for relation, value in (values or {}).items():
            self.add_values(obj, relation, value)
        if relationship and self.reference_uuid:
            obj.add_reference(self.reference_uuid, relationship)
        self.objects.append(obj)
        return obj

    def add_values(self, obj: ProposedObject, relation: str, value: Any) -> None:
        """Add one or several values under a relation, skipping empty ones.

        A value MISP would refuse for the relation's type (a source sent
        something odd) is left out, and the answer says so.
        """
        kind = obj.relation_type(relation)
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is None or item == "" or item == []:
                continue
            if isinstance(item, str) and len(item) > MAX_VALUE:
                if kind != "text":
                    self.skipped += 1
                    continue
                # A whois record or a report body: its start is still useful.
                item = item[:MAX_VALUE]
                self.cut += 1
            checked = checked_value(kind, item)
            if checked is None:
                log.debug("left out a %s value for %s.%s", kind, obj.name, relation)
                self.skipped += 1
                continue
            obj.add_attribute(relation, checked)

    def add_attribute(
        self, attribute_type: str, value: str, category: str, comment: str = ""
    ) -> None:
        """Add a standalone attribute to the answer."""
        self.attributes.append(
            {
                "type": attribute_type,
                "value": value,
                "category": category,
                "to_ids": False,
                "comment": comment,
            }
        )

    def add_tag(self, name: str) -> None:
        if name not in self.tags:
            self.tags.append(name)

    def note(self, text: str) -> None:
        """Record something the analyst should know (truncation, skipped parts)."""
        self.notes.append(text)

    def is_empty(self) -> bool:
        return not (self.objects or self.attributes or self.tags)

    def to_standard(self, *, hover: bool = False) -> dict[str, Any]:
        """Return the misp_standard body: {"results": {...}} plus a comment."""
        results: dict[str, Any] = {}
        attributes = list(self.attributes)
        if hover and self.summary:
            attributes.insert(
                0,
                {"type": "text", "value": self.summary, "category": "Other"},
            )
        if attributes:
            results["Attribute"] = attributes
        objects = self._valid_objects()
        if objects:
            results["Object"] = objects
        if self.tags:
            results["Tag"] = [{"name": name} for name in self.tags]
        body: dict[str, Any] = {"results": results}
        comment = self.comment()
        if comment:
            body["comment"] = comment
        return body

    def to_simplified(self) -> dict[str, Any]:
        """Return the old simplified body: a list of {types, values} groups."""
        groups: dict[tuple[str, str], list[str]] = {}
        if self.summary:
            groups[("text", "summary")] = [self.summary]
        for obj in self.objects:
            for attribute in obj.attributes:
                if self._known_to_misp(attribute.type, attribute.value):
                    continue
                key = (attribute.type, f"{obj.name}: {attribute.object_relation}")
                values = groups.setdefault(key, [])
                if str(attribute.value) not in values:
                    values.append(str(attribute.value))
        for plain in self.attributes:
            groups.setdefault((plain["type"], plain["comment"]), []).append(
                plain["value"]
            )
        results = [
            {"types": [kind], "values": values, "comment": comment}
            for (kind, comment), values in groups.items()
            if values
        ]
        body: dict[str, Any] = {"results": results}
        comment = self.comment()
        if comment:
            body["comment"] = comment
        return body

    def _known_to_misp(self, kind: str, value: Any) -> bool:
        """Tell whether a simplified value only repeats what MISP holds.

        Simplified answers become standalone attributes: the enriched value
        would come back as a duplicate, and reverse-DNS names as domains.
        """
        if str(value) in self.enriched:
            return True
        return kind in ("domain", "hostname") and str(value).endswith(ARPA)

    def _valid_objects(self) -> list[dict[str, Any]]:
        """Return the objects as dicts, leaving out any MISP would refuse."""
        valid = []
        for obj in self.objects:
            try:
                plain = obj.to_dict()
            except PyMISPError as err:
                log.warning("left out a %s object MISP would refuse: %s", obj.name, err)
                self.skipped += 1
                continue
            if not plain.get("Attribute"):
                continue
            valid.append(plain)
        return valid

    def comment(self) -> str:
        parts = list(self.notes)
        if self.cut:
            parts.append(
                f"{self.cut} text value(s) from the source were cut to "
                f"{MAX_VALUE} characters"
            )
        if self.skipped:
            parts.append(
                f"{self.skipped} value(s) from the source were not valid for MISP "
                "and were left out"
            )
        if self.is_empty() and not parts and self.summary:
            parts.append(self.summary)
        return "; ".join(parts)


def checked_value(kind: str, value: Any) -> Any:
    """Return the value as MISP stores it for the type, or None if it is invalid."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | date):
        return None
    if isinstance(value, datetime):
        return value
    # MISP stores every value as a string; its event schema says so.
    text = str(value)
    try:
        if kind == "datetime":
            return _datetime(text)
        if kind in NUMERIC_TYPES:
            float(text)
        elif kind in HASH_LENGTHS:
            return normalise_hash(kind, text)
        elif kind in ("ip-src", "ip-dst"):
            return (
                str(ipaddress.ip_network(text, strict=False))
                if "/" in text
                else (ipaddress.ip_address(text).compressed)
            )
        elif kind in ("domain", "hostname"):
            return normalise_host(text)
    except (InvalidValue, ValueError):
        return None
    return text


def _datetime(text: str) -> datetime:
    """Read a date and time as PyMISP does for datetime attributes."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        try:
            return dateutil.parser.parse(text)
        except (ValueError, OverflowError) as err:
            raise ValueError(text) from err
