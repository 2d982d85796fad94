"""A JSON Schema of the storages file, made from the built-in adapters' signatures.

``storages.schema.json`` beside this module is this schema, written out for editors
(``# yaml-language-server: $schema=…``); a test keeps the two equal.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from .retry import DEFAULT_TIMEOUT, TIMEOUT_BOUNDS
from .specs import BUILTIN_MODULE_ALIASES
from .storages import BUILTIN_STORAGES, builtin_storage_class
from .typehints import NAMED_KINDS, base_type, init_type_hints, members

SCHEMA_PATH = Path(__file__).with_name("storages.schema.json")

#: An option that is one whole ``${VAR}`` reference is converted after expansion (see the README).
_WHOLE_REFERENCE = {"type": "string", "pattern": "^\\$\\{[A-Za-z_][A-Za-z0-9_]*(:-[^}]*)?\\}$"}

#: Text that writes a number, which the option checker reads as that number ('5432', YAML 1.1's 1e3).
_NUMBER_TEXT = {"type": "string", "pattern": "^[-+]?(\\.[0-9]+|[0-9]+(\\.[0-9]*)?)([eE][-+]?[0-9]+)?$"}
_INTEGER_TEXT = {"type": "string", "pattern": "^[-+]?[0-9]+$"}

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", dict: "object", list: "array"}


def storages_schema() -> dict[str, Any]:
    """The schema: a ``storages:`` list; built-in classes get their options checked, others any mapping."""
    builtin_entries = [_builtin_entry(name) for name in BUILTIN_STORAGES]
    custom_entry = {
        "required": ["name", "import"],
        "properties": {"import": {"type": "string", "not": {"enum": sorted(BUILTIN_MODULE_ALIASES)}}},
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "celery-selinon-storage storages file (or Selinon nodes.yml)",
        "type": "object",
        "required": ["storages"],
        "properties": {
            "storages": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string", "minLength": 1},
                        "classname": {"type": "string", "minLength": 1},
                        "import": {"type": "string"},
                        "configuration": {"type": "object"},
                        "cache": {"type": "object"},
                        "retry": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "attempts": {"type": "integer", "minimum": 1, "maximum": 20},
                                "backoff": {"type": "number", "minimum": 0, "maximum": 60},
                                "max_backoff": {"type": "number", "minimum": 0, "maximum": 60},
                            },
                        },
                        "timeout": {
                            "type": "number",
                            "minimum": TIMEOUT_BOUNDS[0],
                            "maximum": TIMEOUT_BOUNDS[1],
                            "default": DEFAULT_TIMEOUT,
                        },
                    },
                    "anyOf": [*builtin_entries, custom_entry],
                },
            }
        },
    }


def _builtin_entry(class_name: str) -> dict[str, Any]:
    cls = builtin_storage_class(class_name)
    hints = init_type_hints(cls)
    options: dict[str, Any] = {}
    required: list[str] = []
    for name, parameter in inspect.signature(cls).parameters.items():
        if parameter.kind not in NAMED_KINDS:
            continue
        option = _type_schema(hints.get(name, Any))
        if parameter.default is not inspect.Parameter.empty and parameter.default is not None:
            option["default"] = parameter.default
        kinds = option.get("type", ["string"])
        if "string" not in kinds:
            alternatives = [option, _WHOLE_REFERENCE]  # port: ${REDIS_PORT:-6379}
            if "number" in kinds:
                alternatives.append(_NUMBER_TEXT)
            elif "integer" in kinds:
                alternatives.append(_INTEGER_TEXT)
            option = {"anyOf": alternatives}
        options[name] = option
        if parameter.default is inspect.Parameter.empty:
            required.append(name)
    configuration: dict[str, Any] = {"type": "object", "additionalProperties": False, "properties": options}
    if required:
        configuration["required"] = required
    class_is_this = {"properties": {"classname": {"const": class_name}}, "required": ["classname"]}
    named_as_class = {"properties": {"name": {"const": class_name}}, "not": {"required": ["classname"]}}
    return {
        "anyOf": [class_is_this, named_as_class],
        "properties": {
            "import": {"enum": sorted(BUILTIN_MODULE_ALIASES)},
            "configuration": configuration,
        },
        **({"required": ["configuration"]} if required else {}),
    }


def _type_schema(annotation: Any) -> dict[str, Any]:
    alternatives = members(annotation)
    if len(alternatives) > 1:
        kinds = [_type_schema(member) for member in alternatives]
        return {"type": [name for kind in kinds for name in kind.get("type", [])]}
    base = base_type(annotation)
    if base is type(None):
        return {"type": ["null"]}
    if base in _JSON_TYPES:
        return {"type": [_JSON_TYPES[base]]}
    return {}


def write_schema(path: Path = SCHEMA_PATH) -> None:
    """Write the schema file shipped with the package."""
    path.write_text(json.dumps(storages_schema(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
