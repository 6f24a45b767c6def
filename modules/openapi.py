"""The OpenAPI 3.1 document of the real endpoints and bodies."""

from __future__ import annotations

from typing import Any

from modules import __version__
from modules.registry import Registry

_ATTRIBUTE = {
    "type": "object",
    "description": "A MISP attribute record; keys not listed are ignored.",
    "required": ["type", "value"],
    "properties": {
        "type": {"type": "string", "examples": ["domain"]},
        "value": {"type": "string", "examples": ["example.com"]},
        "uuid": {"type": "string", "format": "uuid"},
        "category": {"type": "string"},
        "data": {"type": "string", "description": "base64 of an attachment"},
        "Tag": {
            "type": "array",
            "items": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
    },
    "additionalProperties": True,
}

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, for a person"},
        "results": {"type": "array", "maxItems": 0},
    },
}


def openapi_document(registry: Registry) -> dict[str, Any]:
    """Return the OpenAPI document for this server's modules."""
    names = sorted(registry.modules)
    common = {
        "module": {"type": "string", "enum": names},
        "config": {
            "type": ["object", "null"],
            "description": "module settings; values are strings, '' or null",
            "additionalProperties": {"type": ["string", "null"]},
        },
        "event_id": {
            "type": ["string", "integer"],
            "description": "absent for hover queries, which get a shorter deadline",
        },
        "attribute_uuid": {"type": "string"},
        "persistent": {"type": ["integer", "boolean"]},
        "user": {"type": "object", "description": "workflow user record; never logged"},
    }
    query = {
        "oneOf": [
            {
                "title": "misp_standard attribute",
                "type": "object",
                "required": ["module", "attribute"],
                "properties": {
                    **common,
                    "attribute": {"$ref": "#/components/schemas/Attribute"},
                },
            },
            {
                "title": "object enrichment",
                "type": "object",
                "required": ["module", "object"],
                "properties": {
                    **common,
                    "object": {
                        "type": "object",
                        "required": ["name", "Attribute"],
                        "properties": {
                            "name": {"type": "string"},
                            "uuid": {"type": "string"},
                            "Attribute": {
                                "type": "array",
                                "items": {"$ref": "#/components/schemas/Attribute"},
                            },
                        },
                    },
                },
            },
            {
                "title": "simplified",
                "type": "object",
                "required": ["module"],
                "description": "one '<attribute type>': '<value>' pair, e.g. "
                '{"module": "dns", "hostname": "www.example.com"}',
                "properties": {**common, "data": {"type": "string"}},
                "additionalProperties": {"type": "string"},
            },
        ]
    }
    standard_answer = {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "object",
                "properties": {
                    "Object": {"type": "array", "items": {"type": "object"}},
                    "Attribute": {"type": "array", "items": {"type": "object"}},
                    "Tag": {"type": "array", "items": {"type": "object"}},
                },
            },
            "comment": {"type": "string"},
        },
    }
    simplified_answer = {
        "type": "object",
        "required": ["results"],
        "properties": {
            "results": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["types", "values"],
                    "properties": {
                        "types": {"type": "array", "items": {"type": "string"}},
                        "values": {"type": "array", "items": {"type": "string"}},
                        "comment": {"type": "string"},
                    },
                },
            }
        },
    }

    def json_content(schema: dict[str, Any]) -> dict[str, Any]:
        return {"content": {"application/json": {"schema": schema}}}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "misp-enrich",
            "version": __version__,
            "description": "MISP enrichment module server (misp-modules protocol)",
        },
        "paths": {
            "/modules": {
                "get": {
                    "summary": "List the modules in misp-modules' shape",
                    "responses": {
                        "200": {
                            "description": "the modules",
                            **json_content(
                                {"type": "array", "items": {"type": "object"}}
                            ),
                        }
                    },
                }
            },
            "/query": {
                "post": {
                    "summary": "Enrich one attribute or object",
                    "requestBody": {"required": True, **json_content(query)},
                    "responses": {
                        "200": {
                            "description": "an answer, or an error MISP can show",
                            **json_content(
                                {
                                    "oneOf": [
                                        standard_answer,
                                        simplified_answer,
                                        {"$ref": "#/components/schemas/Error"},
                                    ]
                                }
                            ),
                        },
                        "400": {
                            "description": "the body is not JSON, or cannot be read",
                            **json_content({"$ref": "#/components/schemas/Error"}),
                        },
                        "408": {
                            "description": "the body did not arrive within the "
                            "deadline",
                            **json_content({"$ref": "#/components/schemas/Error"}),
                        },
                    },
                }
            },
            "/healthcheck": {
                "get": {
                    "summary": "Tell that the server is up",
                    "responses": {
                        "200": {
                            "description": "up",
                            **json_content(
                                {
                                    "type": "object",
                                    "properties": {"status": {"const": True}},
                                }
                            ),
                        }
                    },
                }
            },
            "/metrics": {
                "get": {
                    "summary": "Give the metrics in Prometheus' text format",
                    "responses": {
                        "200": {
                            "description": "queries, upstream calls, cache, limits",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/version": {
                "get": {
                    "summary": "Give the server version",
                    "responses": {
                        "200": {
                            "description": "the version",
                            **json_content(
                                {
                                    "type": "object",
                                    "properties": {"version": {"type": "string"}},
                                }
                            ),
                        }
                    },
                }
            },
        },
        "components": {"schemas": {"Attribute": _ATTRIBUTE, "Error": _ERROR}},
    }
