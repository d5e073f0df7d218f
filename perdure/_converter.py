"""Payload conversion: Python values <-> JSON, guided by type hints.

Values go out through pydantic's ``to_jsonable_python`` (dataclasses, models,
datetimes, plain JSON) and come back through a ``TypeAdapter`` of the
parameter's or return value's type hint, so a workflow declared to take an
``Order`` dataclass receives an ``Order``.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Sequence
from functools import lru_cache
from typing import Any

import pydantic
import pydantic_core

MAX_PAYLOAD_BYTES = 2 * 1024 * 1024


class PayloadError(TypeError):
    """A value cannot be converted to or from JSON."""


def to_jsonable(value: Any, *, what: str = "value") -> Any:
    try:
        return pydantic_core.to_jsonable_python(value)
    except pydantic_core.PydanticSerializationError as exc:
        raise _not_serializable(value, what, exc) from None


def _not_serializable(value: Any, what: str, exc: Exception) -> PayloadError:
    return PayloadError(
        f"{what} is not serializable to JSON ({type(value).__name__}): {exc}; "
        "use JSON values, dataclasses or pydantic models"
    )


def dumps(value: Any, *, what: str = "value") -> str:
    """Encode to JSON text; raise ``PayloadError`` for unserializable or oversized values."""
    try:
        text = json.dumps(to_jsonable(value, what=what), separators=(",", ":"), allow_nan=False)
    except ValueError as exc:
        raise PayloadError(f"{what} is not valid JSON: {exc}") from None
    if len(text) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"{what} is {len(text)} bytes of JSON, over the {MAX_PAYLOAD_BYTES}-byte limit; "
            "store large data elsewhere and pass a reference"
        )
    return text


def check_size(value: Any, *, what: str) -> None:
    """Reject payloads over the limit (JSON values only: call after ``to_jsonable``)."""
    if _obviously_small(value):
        return
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False))
    except ValueError as exc:
        raise PayloadError(f"{what} are not valid JSON: {exc}") from None
    if size > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            f"{what} are {size} bytes of JSON, over the {MAX_PAYLOAD_BYTES}-byte limit; "
            "store large data elsewhere and pass a reference"
        )


_SMALL_SCALARS = (int, bool, type(None))
_SHORT_STR = 4096  # 64 of these, every character escaped (6 bytes), stay under the limit


def _obviously_small(value: Any) -> bool:
    """A short list of finite scalars and short strings: valid and under the limit.

    Encoding arguments only to measure them costs as much as encoding them for the
    store; most activity arguments are a few ids and numbers, so skip that for them.
    """
    if type(value) is not list or len(value) > 64:
        return False
    for item in value:
        kind = type(item)
        if kind in _SMALL_SCALARS:
            continue
        if kind is str and len(item) <= _SHORT_STR:
            continue
        if kind is float and item - item == 0.0:  # not NaN or infinite
            continue
        return False
    return True


def loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)


@lru_cache(maxsize=1024)
def _adapter(hint: Any) -> pydantic.TypeAdapter[Any]:
    return pydantic.TypeAdapter(hint)


_PLAIN = (int, str, float, bool, dict, list)
_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


def from_jsonable(value: Any, hint: Any, *, what: str = "value") -> Any:
    """Convert JSON data to ``hint``'s type; plain values pass through untyped hints."""
    if hint is Any or hint is inspect.Parameter.empty or hint is None or hint is type(None):
        return value
    if type(value) is hint and hint in _PLAIN:
        return value  # already the right JSON type: skip validation on the hot path
    try:
        return _adapter(hint).validate_python(value)
    except pydantic.ValidationError as exc:
        raise PayloadError(f"{what} does not match its type {_hint_name(hint)}: {exc}") from None
    except (TypeError, pydantic.PydanticSchemaGenerationError):
        return value


def _hint_name(hint: Any) -> str:
    return getattr(hint, "__name__", None) or repr(hint)


class Signature:
    """The parameters and return type of a workflow or activity function."""

    def __init__(
        self, fn: Callable[..., Any], *, skip_first: bool, name: str | None = None
    ) -> None:
        self.name = name or getattr(fn, "__qualname__", repr(fn))
        sig = inspect.signature(fn)
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable forward references: fall back to untyped
            hints = {}
        params = list(sig.parameters.values())
        if skip_first and params:
            params = params[1:]
        self.params = params
        self.hints = [hints.get(p.name, Any) for p in params]
        self.return_hint = hints.get("return", Any)
        self._sig = sig.replace(parameters=params)
        positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        simple = all(p.kind in positional for p in params)
        # Fast path for the common case (plain positional parameters): a length check.
        self._arity = (
            (sum(p.default is inspect.Parameter.empty for p in params), len(params))
            if simple
            else None
        )

    def check_args(self, args: Sequence[Any], *, kind: str) -> None:
        """Raise ``TypeError`` naming the function if ``args`` do not fit its parameters."""
        if self._arity is not None and self._arity[0] <= len(args) <= self._arity[1]:
            return
        try:
            self._sig.bind(*args)
        except TypeError as exc:
            raise TypeError(
                f"{kind} {self.name!r} called with {len(args)} argument(s): {exc}"
            ) from None

    def encode_args(self, args: Sequence[Any], *, kind: str) -> list[Any]:
        self.check_args(args, kind=kind)
        out = []
        to_python = pydantic_core.to_jsonable_python
        for i, value in enumerate(args):
            try:
                out.append(to_python(value))
            except pydantic_core.PydanticSerializationError as exc:
                # The message is built only when needed: this runs for every activity.
                name = self.params[i].name if i < len(self.params) else f"#{i}"
                what = f"argument {name!r} of {kind} {self.name!r}"
                raise _not_serializable(value, what, exc) from None
        if not _obviously_small(out):  # (the message costs more than the check)
            check_size(out, what=f"the arguments of {kind} {self.name!r}")
        return out

    def decode_args(self, args: Sequence[Any], *, kind: str) -> list[Any]:
        self.check_args(args, kind=kind)
        out = []
        params, hints = self.params, self.hints
        for i, value in enumerate(args):
            if i < len(params) and params[i].kind in _POSITIONAL:
                hint = hints[i]
                if hint is Any or (type(value) is hint and hint in _PLAIN):
                    out.append(value)  # nothing to convert: skip the message, too
                    continue
                name = params[i].name
                out.append(from_jsonable(value, hint, what=f"argument {name!r} of {self.name!r}"))
            else:
                out.append(value)
        return out

    def decode_result(self, value: Any) -> Any:
        hint = self.return_hint
        if hint is Any or (type(value) is hint and hint in _PLAIN):
            return value
        return from_jsonable(value, hint, what=f"result of {self.name!r}")
