"""A name → object registry with a decorator, shared by every extension point of tscnet
(docs/design.md, "Extension points"): step policies by name, residual block types and gate folders
by qualified class name (``module.Class``, see :func:`qualname`), so timm and torchvision are
imported only when used; also model sources, executors and learning-rate schedules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")  #: the type of the registered objects


def qualname(obj_or_type) -> str:
    """``module.Class`` of a class or of an instance."""
    cls = obj_or_type if isinstance(obj_or_type, type) else type(obj_or_type)
    return f"{cls.__module__}.{cls.__qualname__}"


class Registry(dict, Generic[T]):
    """``registry.register("a", "b")(obj)`` or ``@registry.register("a")`` adds ``obj`` under each name."""

    def __init__(self, what: str) -> None:
        super().__init__()
        self.what = what

    def register(self, *names: str) -> Callable[[T], T]:
        """A decorator that adds its argument under each of ``names`` and returns it unchanged."""

        def decorator(obj: T) -> T:
            for name in names:
                self[name] = obj
            return obj

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self)
