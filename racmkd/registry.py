"""One Registry class for everything racmkd looks up by name.

Modalities (with their torch-free halves: signals, and the options of data.options), models, losses and compression steps
are registered explicitly under a unique name; configs refer to them by that name. A duplicate name is an error, an unknown one suggests the closest names.

Code outside racmkd registers itself through entry points (the mechanism pytest and others use for
plugins), so that the `racmkd` commands and servers, which start as their own processes, know it: a
distribution declares entry points under the group `racmkd.signals` (a modality's torch-free half,
its Signal and options: read on edge devices, which have no torch) and `racmkd.training` (its
Modality, encoders, losses, compression steps), e.g. in its pyproject.toml

    [project.entry-points."racmkd.signals"]
    imu = "racmkd_imu.signal:register"
    [project.entry-points."racmkd.training"]
    imu = "racmkd_imu.modality:register"

An entry point names a function, called once to register (as here), or a module (or anything else
in it) whose import registers; they load at the first lookup of a registry of their group.
examples/imu_plugin is such a distribution.
"""

from __future__ import annotations

import difflib
import inspect
import threading
import warnings
from collections.abc import Callable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# Plugins load under one lock, at the first lookup of a registry of their group. The lock is
# re-entrant: a plugin that looks names up while it loads sees what is loaded so far. It is not a lock
# Python's import deadlock detection knows of, so a plugin should register what it defines and look
# nothing up while it loads.
_PLUGINS_LOCK = threading.RLock()
_FAILED: dict[str, dict[str, str]] = {}  # group -> {entry point: why it failed}
_LOADING: set[str] = set()  # the groups the thread holding the lock is loading
_LOADED: set[str] = set()  # the groups whose every entry point has been tried
_TRIED: set[tuple[str, str, str]] = set()  # (group, name, value): not tried again after an interrupted load
_recording = threading.local()  # .added: what the plugin this thread is loading has registered so far


def load_plugins(group: str) -> dict[str, str]:
    """Load every entry point installed distributions declare under `group`, once per process;
    returns the ones that failed, with why. A broken plugin is a warning, not the end of the process:
    nothing it registered stays (not a signal without its options), and looking its names up says
    why they are missing."""
    with _PLUGINS_LOCK:
        failed = _FAILED.setdefault(group, {})
        if group in _LOADED or group in _LOADING:  # (being loaded: a plugin's own lookups)
            return dict(failed)
        _LOADING.add(group)
        try:
            for point in entry_points(group=group):
                if (group, point.name, point.value) not in _TRIED:
                    _load_plugin(point, group, failed)
                    _TRIED.add((group, point.name, point.value))
            _LOADED.add(group)
        finally:  # (interrupted: KeyboardInterrupt, SystemExit: the next lookup loads what is left)
            _LOADING.discard(group)
        return dict(failed)


def _load_plugin(point: Any, group: str, failed: dict[str, str]) -> None:
    """One entry point: import it and call it if it names a function; on an error, take out what it
    registered (racmkd's own names, which its import may have registered first, stay: their modules
    are imported and would not register them again)."""
    _recording.added = added = []
    try:
        loaded = point.load()
        if inspect.isfunction(loaded):  # `module:register`; a class or a decorated loss registered when imported
            loaded()
    except BaseException as err:
        for registry, name, obj in added:
            if getattr(obj, "__module__", "").partition(".")[0] != "racmkd":
                registry._entries.pop(name, None)
        if not isinstance(err, Exception):
            raise
        failed[point.name] = f"{point.value}: {type(err).__name__}: {err}"
        warnings.warn(
            f"racmkd plugin {point.name!r} ({point.value}, entry-point group {group}) failed to load: {type(err).__name__}: {err}; nothing it registers is available",
            RuntimeWarning,
            stacklevel=5,
        )
    finally:
        _recording.added = None


class Registry(Generic[T]):
    """A named table of classes or functions, filled by the `register` decorator."""

    def __init__(self, kind: str, plugins: str | None = None) -> None:
        self.kind = kind
        self.plugins = plugins  # the entry-point group whose modules register here (module docstring)
        self._plugins_loaded = plugins is None
        self._entries: dict[str, T] = {}

    @property
    def entries(self) -> dict[str, T]:
        """The registered objects, the plugins' included: the first lookup imports them (load_plugins)."""
        if not self._plugins_loaded:
            load_plugins(self.plugins)  # type: ignore[arg-type] - not loaded means a group is named
            self._plugins_loaded = self.plugins in _LOADED  # not yet while this thread is still importing one of them
        return self._entries

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under `name`; a second object with that name is an error."""

        def add(obj: T) -> T:
            if name in self._entries:
                raise KeyError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {obj!r})")
            self._entries[name] = obj
            added = getattr(_recording, "added", None)
            if added is not None:  # a plugin is loading on this thread: undone if it fails
                added.append((self, name, obj))
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
        entries = self.entries
        if name not in entries:
            close = difflib.get_close_matches(name, entries, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            failed = _FAILED.get(self.plugins, {}) if self.plugins else {}
            broken = f" Plugins that failed to load ({self.plugins}): {'; '.join(f'{n} ({why})' for n, why in failed.items())}." if failed else ""
            raise KeyError(f"unknown {self.kind} {name!r}.{hint} Known: {', '.join(sorted(entries))}.{broken}")
        return entries[name]

    def create(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the registered class or factory: `MODELS.create("student", ...)`."""
        return self.get(name)(*args, **kwargs)  # type: ignore[operator]

    def names(self) -> list[str]:
        """Registered names, sorted (for parametrized tests and help texts)."""
        return sorted(self.entries)

    def __contains__(self, name: object) -> bool:
        return name in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


MODALITIES: Registry = Registry("modality", plugins="racmkd.training")
MODALITY_OPTIONS: Registry = Registry("modality options", plugins="racmkd.signals")  # the dataclass of data.options.<name>, torch-free (racmkd.data.options)
SIGNALS: Registry = Registry("signal", plugins="racmkd.signals")  # a modality's deployment side: input checks and features in numpy (racmkd.data.signals)
MODELS: Registry = Registry("model", plugins="racmkd.training")
LOSSES: Registry = Registry("loss", plugins="racmkd.training")
COMPRESSORS: Registry = Registry("compression step", plugins="racmkd.training")
