"""Triton `config.pbtxt` from plain Python values: one renderer, never a hand-written file per model.

A config is a dict (field -> value) in the field names of Triton's `ModelConfig` protobuf
(`model_config.proto`); `Enum("KIND_CPU")` marks an enum value, lists of dicts are repeated messages (maps are
repeated {key, value} entries). `check_config` parses the text with Triton's own message type
(`tritonclient.grpc.model_config_pb2.ModelConfig`) so a typo in a field name fails at generation time.
"""

from __future__ import annotations

import json

from ..errors import BackendUnavailableError, InputError


class Enum(str):
    """An enum value: rendered bare (`kind: KIND_GPU`), not quoted."""


def _scalar(value) -> str:
    if isinstance(value, Enum):
        return str(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # protobuf text format accepts JSON string escapes
    raise InputError(f"config value {value!r}: expected str, int, float, bool, Enum, dict or list")


def render(config: dict, indent: int = 0) -> str:
    """{field: value} -> protobuf text format, one field per line, nested messages indented."""
    pad = "  " * indent
    lines = []
    for key, value in config.items():
        if value is None:
            continue
        if isinstance(value, dict):
            lines.append(f"{pad}{key} {{\n{render(value, indent + 1)}{pad}}}")
        elif isinstance(value, (list, tuple)):
            if value and all(isinstance(v, dict) for v in value):
                items = ",\n".join(f"{pad}  {{\n{render(v, indent + 2)}{pad}  }}" for v in value)
                lines.append(f"{pad}{key} [\n{items}\n{pad}]")
            else:
                lines.append(f"{pad}{key}: [ {', '.join(_scalar(v) for v in value)} ]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def check_config(text: str):
    """Parse `text` as Triton's `ModelConfig`; returns the message. Raises `InputError` on a bad config and
    `BackendUnavailableError` when tritonclient (which ships Triton's `model_config_pb2`) is not installed."""
    try:
        from google.protobuf import text_format
        from tritonclient.grpc import model_config_pb2
    except ImportError as e:
        raise BackendUnavailableError(f"checking a Triton config needs tritonclient[grpc] ({e}); "
                                      "pip install 'dinofeat[serve]'") from None
    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as e:
        raise InputError(f"generated config.pbtxt does not parse as Triton's ModelConfig: {e}") from None


__all__ = ["Enum", "check_config", "render"]
