"""Answers for MISP: objects from the misp-objects templates, or simplified."""

from __future__ import annotations

from typing import Any

import orjson
from pymisp import AbstractMISP, MISPObject


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

    def __init__(self, reference_uuid: str | None) -> None:
        self.reference_uuid = reference_uuid
        self.objects: list[MISPObject] = []
        self.attributes: list[dict[str, Any]] = []
        self.tags: list[str] = []
        self.notes: list[str] = []
        self.summary: str | None = None

    def add_object(
        self,
        template: str,
        values: dict[str, Any] | None = None,
        *,
        relationship: str | None = "related-to",
        comment: str = "",
    ) -> MISPObject:
        """Add an object from its template, referencing the enriched attribute.

        `values` maps each object relation to a value or a list of values;
        empty values are left out.
        """
        obj = MISPObject(template, standalone=False, strict=True)
        if comment:
            obj.comment = comment
        for relation, value in (values or {}).items():
            self.add_values(obj, relation, value)
        if relationship and self.reference_uuid:
            obj.add_reference(self.reference_uuid, relationship)
        self.objects.append(obj)
        return obj

    @staticmethod
    def add_values(obj: MISPObject, relation: str, value: Any, **kwargs: Any) -> None:
        """Add one or several values under a relation, skipping empty ones."""
        for item in value if isinstance(value, list | tuple) else [value]:
            if item is None or item == "" or item == []:
                continue
            # MISP stores every value as a string; its event schema says so.
            if isinstance(item, int | float) and not isinstance(item, bool):
                item = str(item)
            obj.add_attribute(relation, value=item, to_ids=False, **kwargs)

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
        if self.objects:
            results["Object"] = [obj.to_dict() for obj in self.objects]
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

    def comment(self) -> str:
        parts = list(self.notes)
        if self.is_empty() and not parts and self.summary:
            parts.append(self.summary)
        return "; ".join(parts)
