"""A map from flows to what the addon keeps on each while it lives: a WeakKeyDictionary's job, for
the operations the addon uses ([], get, pop, del, in, len), at about half its cost.

Every request passes through several of these maps; WeakKeyDictionary makes each operation a Python
method call on top of the dict's (and, for a removal, a check for a running iteration, which these
maps never have). Here each is the dict's own, on weak references: a flow's entry goes when the
flow does, as with a WeakKeyDictionary (its reference's callback pops it).
"""

from __future__ import annotations

from typing import Generic, TypeVar
from weakref import ref

K = TypeVar("K")
V = TypeVar("V")
_MISSING = object()


class FlowMap(Generic[K, V]):
    __slots__ = ("_data", "_drop", "__weakref__")
    __iter__ = None  # (not iterable: nothing iterates these maps)

    def __init__(self) -> None:
        self._data: dict[ref[K], V] = {}

        def drop(gone: ref[K], owner=ref(self)) -> None:  # (as WeakKeyDictionary's: the map, weakly)
            this = owner()
            if this is not None:
                this._data.pop(gone, None)

        self._drop = drop

    def __setitem__(self, key: K, value: V) -> None:
        self._data[ref(key, self._drop)] = value

    def __getitem__(self, key: K) -> V:
        return self._data[ref(key)]

    def get(self, key: K, default: V | None = None) -> V | None:
        return self._data.get(ref(key), default)

    def pop(self, key: K, default: object = _MISSING):
        if default is _MISSING:
            return self._data.pop(ref(key))
        return self._data.pop(ref(key), default)

    def __delitem__(self, key: K) -> None:
        del self._data[ref(key)]

    def __contains__(self, key: object) -> bool:
        try:
            return ref(key) in self._data
        except TypeError:  # (a key no weak reference can be made to is in no map)
            return False

    def __len__(self) -> int:
        return len(self._data)
