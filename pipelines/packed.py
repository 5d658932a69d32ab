"""``Packed``: the payload of a batched element of the micro-batch composites (``pipelines.transforms``).

Its own module because it needs Beam (``ObservableMixin``) and ``pipelines.records`` must not:
the user-deletion command imports the records without paying for Beam's import.
"""

from __future__ import annotations

import itertools
import pickle
import threading
from contextlib import contextmanager
from typing import Any, Generic, Iterator, TypeVar

from apache_beam.coders.observable import ObservableMixin

__all__ = ["Packed", "passed_by_reference"]

T = TypeVar("T")


class Packed(ObservableMixin, Generic[T]):
    """A batched element's payload (a list of events, a shard's ``{key: state}``) that is pickled
    at most once, however often Beam encodes it, and not at all inside ``passed_by_reference``.

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
        return cls._of(None, blob)

    @classmethod
    def _of(cls, value: T | None, blob: bytes | None) -> "Packed[T]":
        packed = cls.__new__(cls)
        packed._value, packed._blob, packed.observers = value, blob, []
        return packed

    @property
    def value(self) -> T:
        """The payload (unpickled on first use after a stage boundary)."""
        if self._value is None:
            self._value = pickle.loads(self._blob)  # type: ignore[arg-type]
        return self._value

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        references = getattr(_BY_REFERENCE, "references", None)
        if references is not None:
            return (_referenced, (references.add(self),))
        if self._blob is None:
            self._blob = pickle.dumps(self._value, protocol=pickle.HIGHEST_PROTOCOL)
        return (Packed._from_blob, (self._blob,))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Packed) and self.value == other.value

    def __repr__(self) -> str:
        return f"Packed({self.value!r})"


# --- passing by reference inside one process ------------------------------------------------------
#
# Why: on the in-process FnApiRunner every element that crosses a stage boundary (a shuffle, a
# fusion break) is encoded and decoded again in the same process, though nothing leaves it: the
# events' pickling and unpickling at those boundaries was ~0.6 s of an 84k-event batch's ~5.4 s
# Beam run (py-spy). Inside ``passed_by_reference`` a ``Packed`` encodes as the number of an entry
# in a table of this process, and decodes as a ``Packed`` of the same payload. Beam's model already
# forbids a DoFn to change its input, so sharing the payload instead of a copy changes no result;
# the folds that update their carried states in place get states that the driver hands over for
# that (``FeaturePipeline._saved_state(keep=False)``). Beam has no hook for this (its coders are
# chosen per type at construction, and a runner-wide "in-memory" channel still encodes).


class _References:
    """The payloads encoded by reference during one ``passed_by_reference`` block."""

    _table: dict[int, "Packed[Any]"] = {}  # shared by every thread: a bundle may decode on another one
    _numbers = itertools.count()

    def __init__(self) -> None:
        self.numbers: list[int] = []

    def add(self, packed: "Packed[Any]") -> int:
        number = next(self._numbers)
        self._table[number] = packed
        self.numbers.append(number)
        return number

    def release(self) -> None:
        for number in self.numbers:
            self._table.pop(number, None)
        self.numbers.clear()

    @classmethod
    def get(cls, number: int) -> "Packed[Any]":
        try:
            return cls._table[number]
        except KeyError:
            raise pickle.UnpicklingError(
                f"Packed reference {number} decoded outside the run that encoded it (passed_by_reference)"
            ) from None


def _referenced(number: int) -> "Packed[Any]":
    original = _References.get(number)
    return Packed._of(original._value, original._blob)  # its own observers; the same payload


_BY_REFERENCE = threading.local()


@contextmanager
def passed_by_reference() -> Iterator[None]:
    """Within the block, ``Packed`` values pickled by this thread pass by reference: for a runner
    that decodes them in this process before the block ends (the in-process FnApiRunner). Anything
    pickled in the block for another process or for later would not decode: only wrap code that
    runs a pipeline in this process. Nested blocks share the outer one's table."""
    if getattr(_BY_REFERENCE, "references", None) is not None:
        yield
        return
    references = _References()
    _BY_REFERENCE.references = references
    try:
        yield
    finally:
        _BY_REFERENCE.references = None
        references.release()
