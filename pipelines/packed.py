"""``Packed``: the payload of a batched element of the micro-batch composites (``pipelines.transforms``).

Its own module because it needs Beam (``ObservableMixin``) and ``pipelines.records`` must not:
the user-deletion command imports the records without paying for Beam's import.
"""

from __future__ import annotations

import pickle
from typing import Any, Generic, TypeVar

from apache_beam.coders.observable import ObservableMixin

T = TypeVar("T")


class Packed(ObservableMixin, Generic[T]):
    """A batched element's payload (a list of events, a shard's ``{key: state}``) that is pickled
    at most once, however often Beam encodes it.

    Why by hand: Beam's Python workers estimate the size of the first ten elements of every
    PCollection (and a sample after) by encoding them, and the fallback coder pickles each list
    item in a call of its own. With one element per batch or shard nearly every element is
    sampled, so every event was pickled about eight times per micro-batch (10 s of a 29 s run,
    profiled). A ``Packed`` keeps its pickled form: re-encoding it (a sample, a stage boundary, a
    copy decoded from one) costs a copy of bytes. Its payload must not be changed once packed.

    As an ``ObservableMixin`` (Beam's marker for lazily iterated values) a top-level ``Packed``
    element is not encoded at all for the size sample (Beam counts it as one byte): its events are
    then pickled only where they cross a shuffle (internal Beam API: if it changes, the cost is
    one pickle more per batch, not a wrong result).
    """

    __slots__ = ("_value", "_blob", "observers")

    def __init__(self, value: T):
        self._value: T | None = value
        self._blob: bytes | None = None
        self.observers: list[Any] = []

    @classmethod
    def _from_blob(cls, blob: bytes) -> "Packed[T]":
        packed = cls.__new__(cls)
        packed._value, packed._blob, packed.observers = None, blob, []
        return packed

    @property
    def value(self) -> T:
        """The payload (unpickled on first use after a stage boundary)."""
        if self._value is None:
            self._value = pickle.loads(self._blob)  # type: ignore[arg-type]
        return self._value

    def __reduce__(self) -> tuple[Any, tuple[bytes]]:
        if self._blob is None:
            self._blob = pickle.dumps(self._value, protocol=pickle.HIGHEST_PROTOCOL)
        return (Packed._from_blob, (self._blob,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Packed) and self.value == other.value

    def __repr__(self) -> str:
        return f"Packed({self.value!r})"
