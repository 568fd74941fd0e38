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

An entry point names a function (or any callable, a class's method), called once to register (as
here), or a module, or anything else in it whose import registers (a class, a decorated loss: not
called); they load at the first lookup of a registry of their group. racmkd's own names are
racmkd's: a plugin that registered one first (before racmkd's module was imported) loses it when
racmkd's registers, with a warning. examples/imu_plugin is such a distribution.
"""

from __future__ import annotations

import difflib
import inspect
import sys
import threading
import warnings
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar


def did_you_mean(name: str, choices: Iterable[str], otherwise: str = "", n: int = 1) -> str:
    """' Did you mean 'x'?' for the choices closest to a misspelt `name` (difflib's), else `otherwise`:
    the hint every "unknown name" error ends with."""
    close = difflib.get_close_matches(str(name), list(choices), n=n)
    return f" Did you mean {', '.join(map(repr, close))}?" if close else otherwise


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
    """One entry point: import it and call it if it names a callable its import did not register;
    on an error, take out what it registered (what racmkd's own modules registered meanwhile, imported
    by it, stays: they are imported and would not register it again)."""
    _recording.added = added = []
    try:
        loaded = point.load()
        registered = any(obj is loaded for _, _, obj, _ in added)  # a class or a decorated loss, registered when imported
        if callable(loaded) and not inspect.isclass(loaded) and not inspect.ismodule(loaded) and not registered:
            loaded()  # `module:register` (a classmethod, a callable object: called too; they were passed over in silence)
    except BaseException as err:
        for registry, name, obj, by_racmkd in added:
            if not by_racmkd and registry._entries.get(name) is obj:  # (a plugin's alias of a racmkd class included)
                registry._entries.pop(name)
                registry._by_plugin.discard(name)
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
        self._by_plugin: set[str] = set()  # names registered by code outside racmkd

    @property
    def entries(self) -> dict[str, T]:
        """The registered objects, the plugins' included: the first lookup imports them (load_plugins)."""
        if not self._plugins_loaded:
            load_plugins(self.plugins)  # type: ignore[arg-type] - not loaded means a group is named
            self._plugins_loaded = self.plugins in _LOADED  # not yet while this thread is still importing one of them
        return self._entries

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: add the decorated object under `name`; a second object with that name is an
        error, except that racmkd's own module registering a name a plugin took first takes it back
        (the plugin's entry is dropped, with a warning): a plugin loaded before racmkd's module was
        imported made racmkd's own registration fail, and every later lookup with it."""
        by_racmkd = str(sys._getframe(1).f_globals.get("__name__", "")).partition(".")[0] == "racmkd"  # who registers, not what

        def add(obj: T) -> T:
            if name in self._entries:
                if not (by_racmkd and name in self._by_plugin):
                    raise KeyError(f"{self.kind} {name!r} is registered twice ({self._entries[name]!r} and {obj!r})")
                warnings.warn(f"a plugin registered racmkd's own {self.kind} {name!r} ({self._entries[name]!r}); racmkd's stays", RuntimeWarning, stacklevel=3)
                self._by_plugin.discard(name)
            elif not by_racmkd:
                self._by_plugin.add(name)
            self._entries[name] = obj
            added = getattr(_recording, "added", None)
            if added is not None:  # a plugin is loading on this thread: undone if it fails
                added.append((self, name, obj, by_racmkd))
            return obj

        return add

    def unregister(self, name: str) -> T:
        """Remove `name` and return what it held: a plugin or a test that registered a modality (its
        signal, options and class under one name) takes it out again, so a later `register` of that
        name is not a duplicate and other code no longer lists it."""
        if name not in self._entries:
            raise KeyError(f"{self.kind} {name!r} is not registered. Known: {', '.join(sorted(self._entries))}")
        self._by_plugin.discard(name)
        return self._entries.pop(name)

    def get(self, name: str) -> T:
        """The object registered as `name`; an unknown name names the close matches."""
        entries = self.entries
        if name not in entries:
            hint = did_you_mean(name, entries, n=3)
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
