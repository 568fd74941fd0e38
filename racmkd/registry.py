"""One Registry class for everything racmkd looks up by name.

Modalities (with their torch-free halves: signals, and the options of data.options), models, losses and compression steps
are registered explicitly under a unique name; configs refer to them by that name. A duplicate name is an error, an unknown one suggests the closest names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of classes or functions, filled by the `register` decorator."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under `name`; a second object with that name is an error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {obj!r})")
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name: str) -> T:
        """Remove `name` and return what it held: a plugin or a test that registered a modality (its
        signal, options and class under one name) takes it out again, so a later `register` of that
        name is not a duplicate and other code no longer lists it."""
        if name not in self._entries:
            raise KeyError(f"{self.kind} {name!r} is not registered. Known: {', '.join(sorted(self._entries))}")
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        """The object registered as `name`; an unknown name names the close matches."""
        if name not in self._entries:
            close = difflib.get_close_matches(name, self._entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(self._entries))}")
        return self._entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the registered class or factory: `MODELS.create("student", ...)`."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Registered names, sorted (for parametrized tests and help texts)."""
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODALITIES: Registry = Registry("modality")
MODALITY_OPTIONS: Registry = Registry("modality options")  # the dataclass of data.options.<name>, torch-free (racmkd.data.options)
SIGNALS: Registry = Registry("signal")  # a modality's deployment side: input checks and features in numpy (racmkd.data.signals)
MODELS: Registry = Registry("model")
LOSSES: Registry = Registry("loss")
COMPRESSORS: Registry = Registry("compression step")
