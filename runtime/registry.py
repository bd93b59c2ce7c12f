"""A name -> object registry (detectron2's `Registry`, written small): model families register themselves here."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from .errors import ZsdError

T = TypeVar("T")


class Registry(Generic[T]):
    """Objects by name; `get` of an unknown name is a user error that lists what exists."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@MODELS.register("pading")` on a class (or any object) stores it under `name`."""

        def add(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return add

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ZsdError(f"unknown {self.what} {name!r}.", f"choose one of {', '.join(self._items)}.")
        return self._items[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
