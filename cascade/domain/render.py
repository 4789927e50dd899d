"""`{{path}}` placeholders in template content.

Content is compiled once per template version: strings without a
placeholder are kept as they are, and content with none at all is shared by
every message as one object. A path is looked up in the send's data by dots;
`recipient.<field>` reads the recipient. A missing path renders empty.
"""

from __future__ import annotations

import json
import re
from typing import Any, Mapping

__all__ = ["CompiledContent", "compile_content"]

_PLACEHOLDER = re.compile(r"\{\{\s*([A-Za-z0-9_.\-]+)\s*\}\}")


def _lookup(path: str, data: Mapping[str, Any] | None, recipient: Mapping[str, Any]) -> str:
    head, _, rest = path.partition(".")
    if head == "recipient" and rest:
        value: Any = recipient.get(rest)
    else:
        value = data
        for part in path.split("."):
            if not isinstance(value, Mapping):
                return ""
            value = value.get(part)
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return str(value)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


class _Text:
    __slots__ = ("parts",)

    def __init__(self, text: str) -> None:
        # Alternating literal / path pieces: even indexes are literals.
        self.parts = _PLACEHOLDER.split(text)

    def render(self, data: Mapping[str, Any] | None, recipient: Mapping[str, Any]) -> str:
        parts = self.parts
        out = [parts[0]]
        for i in range(1, len(parts), 2):
            out.append(_lookup(parts[i], data, recipient))
            out.append(parts[i + 1])
        return "".join(out)


def _compile(value: Any) -> tuple[Any, bool]:
    if isinstance(value, str):
        if _PLACEHOLDER.search(value):
            return _Text(value), True
        return value, False
    if isinstance(value, dict):
        items = {k: _compile(v) for k, v in value.items()}
        return {k: c for k, (c, _) in items.items()}, any(d for _, d in items.values())
    if isinstance(value, list):
        compiled = [_compile(v) for v in value]
        return [c for c, _ in compiled], any(d for _, d in compiled)
    return value, False


def _render(value: Any, data: Mapping[str, Any] | None, recipient: Mapping[str, Any]) -> Any:
    if isinstance(value, _Text):
        return value.render(data, recipient)
    if isinstance(value, dict):
        return {k: _render(v, data, recipient) for k, v in value.items()}
    if isinstance(value, list):
        return [_render(v, data, recipient) for v in value]
    return value


class CompiledContent:
    """Content ready to render; `render` is a no-op for static content."""

    __slots__ = ("_compiled", "dynamic", "source")

    def __init__(self, source: Mapping[str, Any]) -> None:
        self.source = source
        self._compiled, self.dynamic = _compile(dict(source))

    def render(self, data: Mapping[str, Any] | None, recipient: Mapping[str, Any]) -> Any:
        if not self.dynamic:
            return self.source
        return _render(self._compiled, data, recipient)


def compile_content(source: Mapping[str, Any]) -> CompiledContent:
    return CompiledContent(source)
