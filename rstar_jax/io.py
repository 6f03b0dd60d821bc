"""Artifact I/O: every file is written to a temporary name and renamed, and bad input names file and line."""
from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterable, Iterator
from typing import Any

from etils import epath


class InputError(ValueError):
    """Malformed input: the message names the file, the line and the field."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Writes `data` to `path` via a temporary sibling and a rename, so readers never see half a file."""
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.write_bytes(data)
    if isinstance(path, epath.Path) and str(path).startswith("gs://"):
        tmp.rename(path)
    else:
        os.replace(os.fspath(tmp), os.fspath(path))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text flavour of `atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def write_jsonl(path: str | os.PathLike, records: Iterable[dict[str, Any]]) -> int:
    """Writes one JSON object per line, atomically; returns the number of records."""
    lines = [json.dumps(r, ensure_ascii=False) for r in records]
    atomic_write_text(path, "".join(line + "\n" for line in lines))
    return len(lines)


def read_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yields (line_number, object) for each non-blank line; a line that is not a JSON object raises InputError."""
    path = epath.Path(path)
    if not path.exists():
        raise InputError(f"{path}: file not found")
    with path.open("r") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"{path}:{lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
            yield lineno, obj


def require_field(obj: dict[str, Any], field: str, kind: type | tuple[type, ...], where: str) -> Any:
    """Returns obj[field] if present and of `kind`; otherwise raises InputError naming `where` and the field."""
    if field not in obj:
        raise InputError(f"{where}: missing field '{field}'")
    value = obj[field]
    if not isinstance(value, kind) or (isinstance(value, bool) and bool not in _as_tuple(kind)):
        names = "/".join(k.__name__ for k in _as_tuple(kind))
        raise InputError(f"{where}: field '{field}' must be {names}, got {type(value).__name__}")
    return value


def _as_tuple(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)
