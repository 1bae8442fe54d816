"""Check JSON values against the schemas of an OpenAPI 3.1 document (``jsonschema`` is not installed here).

Covers the JSON Schema keywords pydantic emits; any other validation keyword fails loudly, so a schema this
checker does not understand can never pass by accident.
"""

from __future__ import annotations

import re
from typing import Any

_ANNOTATIONS = {"title", "description", "default", "examples", "format", "deprecated", "readOnly", "writeOnly"}
_TYPES: dict[str, Any] = {
    "object": dict, "array": list, "string": str, "boolean": bool, "null": type(None),
    "integer": int, "number": (int, float),
}  # fmt: skip


class SchemaError(AssertionError):
    pass


def _type_ok(value: Any, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def validate(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str = "$") -> None:
    """Raise SchemaError naming the first place where ``value`` does not fit ``schema``."""
    for key in schema:
        if key not in _ANNOTATIONS and key not in _CHECKS:
            raise SchemaError(f"{path}: the checker does not know the schema keyword {key!r}")
    for key, check in _CHECKS.items():
        if key in schema:
            check(value, schema, doc, path)


def _ref(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    ref = schema["$ref"]
    match = re.fullmatch(r"#/components/schemas/([^/]+)", ref)
    if not match or match.group(1) not in doc["components"]["schemas"]:
        raise SchemaError(f"{path}: unresolvable $ref {ref!r}")
    validate(value, doc["components"]["schemas"][match.group(1)], doc, path)


def _type(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
    if not any(_type_ok(value, n) for n in names):
        raise SchemaError(f"{path}: {value!r} is not of type {schema['type']}")


def _properties(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if isinstance(value, dict):
        for name, sub in schema["properties"].items():
            if name in value:
                validate(value[name], sub, doc, f"{path}.{name}")


def _required(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if isinstance(value, dict):
        missing = [n for n in schema["required"] if n not in value]
        if missing:
            raise SchemaError(f"{path}: missing required {missing}")


def _additional(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if not isinstance(value, dict):
        return
    extra = [k for k in value if k not in schema.get("properties", {})]
    rule = schema["additionalProperties"]
    if rule is False and extra:
        raise SchemaError(f"{path}: properties not in the schema: {extra}")
    if isinstance(rule, dict):
        for k in extra:
            validate(value[k], rule, doc, f"{path}.{k}")


def _items(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if isinstance(value, list):
        for i, item in enumerate(value):
            validate(item, schema["items"], doc, f"{path}[{i}]")


def _any_of(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    errors = []
    for sub in schema["anyOf"]:
        try:
            validate(value, sub, doc, path)
            return
        except SchemaError as exc:
            errors.append(str(exc))
    raise SchemaError(f"{path}: matches none of anyOf: {errors}")


def _enum(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if value not in schema["enum"]:
        raise SchemaError(f"{path}: {value!r} is not one of {schema['enum']}")


def _const(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if value != schema["const"]:
        raise SchemaError(f"{path}: {value!r} is not {schema['const']!r}")


def _minimum(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if isinstance(value, int | float) and value < schema["minimum"]:
        raise SchemaError(f"{path}: {value} < {schema['minimum']}")


def _min_length(value: Any, schema: dict[str, Any], doc: dict[str, Any], path: str) -> None:
    if isinstance(value, str) and len(value) < schema["minLength"]:
        raise SchemaError(f"{path}: {value!r} is shorter than {schema['minLength']}")


_CHECKS = {
    "$ref": _ref, "type": _type, "properties": _properties, "required": _required,
    "additionalProperties": _additional, "items": _items, "anyOf": _any_of, "enum": _enum, "const": _const,
    "minimum": _minimum, "minLength": _min_length,
}  # fmt: skip


def response_schema(doc: dict[str, Any], method: str, path: str, status: int) -> dict[str, Any] | None:
    """The documented JSON schema of a response (None for a documented empty body). SchemaError if the
    operation or the status is not documented."""
    for template, ops in doc["paths"].items():
        pattern = "^" + re.sub(r"\{[^/]+\}", "[^/]+", template) + "$"
        if re.match(pattern, path) and method.lower() in ops:
            responses = ops[method.lower()]["responses"]
            if str(status) not in responses:
                raise SchemaError(f"{method} {path}: status {status} is not documented ({sorted(responses)})")
            content = responses[str(status)].get("content")
            return None if content is None else content["application/json"]["schema"]  # type: ignore[no-any-return]
    raise SchemaError(f"{method} {path} is not in the document")
