"""``NamedTuple`` for the import-light modules (the ``mtd`` command, stage2 after the pivot).

``typing`` brings ``re``, ``contextlib``, ``functools`` and ``enum`` along: about 0.1 s of the ``mtd``
command's start-up in a TCG guest (``python3 -X importtime``), on a device a noticeable share of a
flash write. This ``NamedTuple`` makes the same class from the class body's annotations with
``collections.namedtuple`` (fields in order, trailing defaults, methods, properties and docstring
kept), without importing ``typing``. Type checkers see ``typing.NamedTuple``; an importer writes::

    if TYPE_CHECKING:
        from typing import NamedTuple
    else:
        from wrtcore.light_tuple import NamedTuple
"""

from __future__ import annotations

from collections import namedtuple


class _Maker(type):
    def __new__(mcs, name: str, bases: tuple[type, ...], body: dict[str, object]) -> type:
        if not bases:  # NamedTuple itself
            return super().__new__(mcs, name, bases, body)
        annotations = body.get("__annotations__", {})
        fields = tuple(annotations) if isinstance(annotations, dict) else ()
        defaults = tuple(body[f] for f in fields if f in body)
        if any(f in body for f in fields[:len(fields) - len(defaults)]):
            raise TypeError(f"{name}: a field without a default follows one with a default")
        base = namedtuple(name, fields, defaults=defaults, module=str(body.get("__module__", "")))  # type: ignore[misc]
        rest = {k: v for k, v in body.items() if k not in fields}
        return type(name, (base,), {**rest, "__slots__": ()})


class NamedTuple(metaclass=_Maker):
    """Subclass it as ``typing.NamedTuple``: the result is a ``collections.namedtuple`` class."""
