"""MISP objects for answers, built from PyMISP's templates without its bookkeeping.

PyMISP's MISPObject tracks every field change and re-validates on each
attribute, which costs more than the rest of a cached answer. An answer
object is written once and read once, so it only needs what MISP reads:
the template's identity and each attribute's type, category and flags,
taken from PyMISP once per template relation.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from functools import cache
from typing import Any

from pymisp import MISPObject
from pymisp.exceptions import InvalidMISPObject


@dataclass(frozen=True, slots=True)
class Template:
    """A misp-objects template: what every object built from it carries."""

    name: str
    meta_category: str
    uuid: str
    version: str
    description: str
    definition: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Relation:
    """How PyMISP types an attribute of a template's relation."""

    type: str
    category: str
    disable_correlation: Any


@cache
def template(name: str) -> Template:
    """Return a template from the misp-objects PyMISP ships; KeyError if unknown."""
    reference = MISPObject(name, standalone=False, strict=True)
    if not reference._known_template or not reference._definition:
        raise KeyError(f"no misp-objects template named {name}")
    return Template(
        name=name,
        meta_category=reference["meta-category"],
        uuid=reference.template_uuid,
        version=str(reference.template_version),
        description=reference.description,
        definition=reference._definition,
    )


@cache
def relation(template_name: str, name: str) -> Relation:
    """Return the type, category and flags PyMISP gives a relation's attribute."""
    reference = MISPObject(template_name, standalone=False, strict=True)
    if name not in (reference._definition or {}).get("attributes", {}):
        raise ValueError(f"the {template_name} template has no relation {name}")
    # A placeholder value: only the typing PyMISP derives is kept.
    attribute = reference.add_attribute(name, value="1", to_ids=False)
    assert attribute is not None
    return Relation(
        type=attribute.type,
        category=attribute.category,
        disable_correlation=attribute.disable_correlation,
    )


class ObjectAttribute:
    """One attribute of a proposed object."""

    __slots__ = ("comment", "kind", "object_relation", "uuid", "value")

    def __init__(self, object_relation: str, kind: Relation, value: Any) -> None:
        self.uuid = str(uuid.uuid4())
        self.object_relation = object_relation
        self.kind = kind
        self.value = value
        self.comment = ""

    @property
    def type(self) -> str:
        return self.kind.type

    @property
    def category(self) -> str:
        return self.kind.category


class ProposedObject:
    """A MISP object an answer proposes, with fresh uuids."""

    __slots__ = (
        "attributes",
        "comment",
        "references",
        "template",
        "uuid",
    )

    def __init__(self, template_name: str, comment: str = "") -> None:
        self.template = template(template_name)
        self.uuid = str(uuid.uuid4())
        self.comment = comment
        self.attributes: list[ObjectAttribute] = []
        self.references: list[tuple[str, str, str]] = []

    @property
    def name(self) -> str:
        return self.template.name

    def relation_type(self, name: str) -> str:
        """Return the attribute type of a relation; ValueError if there is none."""
        return relation(self.template.name, name).type

    def add_attribute(self, object_relation: str, value: Any) -> ObjectAttribute:
        kind = relation(self.template.name, object_relation)
        attribute = ObjectAttribute(object_relation, kind, value)
        self.attributes.append(attribute)
        return attribute

    def add_reference(self, referenced_uuid: str, relationship_type: str) -> None:
        self.references.append((str(uuid.uuid4()), referenced_uuid, relationship_type))

    def validate(self) -> None:
        """Raise InvalidMISPObject where MISP would refuse the object."""
        definition = self.template.definition
        present: dict[str, int] = {}
        for attribute in self.attributes:
            relation_name = attribute.object_relation
            present[relation_name] = present.get(relation_name, 0) + 1
        missing = set(definition.get("required", ())) - present.keys()
        if missing:
            raise InvalidMISPObject(f"{sorted(missing)} are required")
        one_of = definition.get("requiredOneOf")
        if one_of and not set(one_of) & present.keys():
            raise InvalidMISPObject(
                "at least one of these attributes is required: " + ", ".join(one_of)
            )
        relations = definition["attributes"]
        for relation_name, count in present.items():
            if count > 1 and not relations[relation_name].get("multiple"):
                raise InvalidMISPObject(f"{relation_name} may occur only once")

    def to_dict(self) -> dict[str, Any]:
        """Return the object as MISP reads it, in the order PyMISP writes it."""
        self.validate()
        template = self.template
        plain: dict[str, Any] = {
            "name": template.name,
            "meta-category": template.meta_category,
            "template_uuid": template.uuid,
            "description": template.description,
            "template_version": template.version,
            "uuid": self.uuid,
        }
        if self.references:
            plain["ObjectReference"] = [
                {
                    "uuid": reference_uuid,
                    "object_uuid": self.uuid,
                    "referenced_uuid": referenced,
                    "relationship_type": relationship,
                }
                for reference_uuid, referenced, relationship in self.references
            ]
        if self.attributes:
            plain["Attribute"] = [_attribute_dict(a) for a in self.attributes]
        plain["distribution"] = "5"
        plain["sharing_group_id"] = "0"
        if self.comment:
            plain["comment"] = self.comment
        return plain


def _attribute_dict(attribute: ObjectAttribute) -> dict:
    kind = attribute.kind
    plain = {
        "uuid": attribute.uuid,
        "object_relation": attribute.object_relation,
        "value": attribute.value,
        "type": kind.type,
        "category": kind.category,
        "disable_correlation": kind.disable_correlation,
        "to_ids": False,
    }
    if attribute.comment:
        plain["comment"] = attribute.comment
    return plain
