"""``Packed`` pickles its payload once, however often it is encoded, not at all inside
``passed_by_reference``, and Beam's size sample does not encode a top-level one."""

from __future__ import annotations

import pickle
import threading

import pytest
from apache_beam.coders import coders

from pipelines.packed import Packed, passed_by_reference


class _CountsPickling:
    pickled = 0

    def __reduce__(self):
        _CountsPickling.pickled += 1
        return (_CountsPickling, ())


def test_payload_is_pickled_once_and_round_trips():
    _CountsPickling.pickled = 0
    packed = Packed([_CountsPickling(), {"k": [1, 2.5, "x"]}])
    first, second = pickle.dumps(packed), pickle.dumps(packed)
    assert first == second and _CountsPickling.pickled == 1
    copy = pickle.loads(first)
    assert copy.value[1] == {"k": [1, 2.5, "x"]}
    pickle.dumps(copy)  # a decoded copy re-encodes from its bytes
    assert _CountsPickling.pickled == 1


def test_beam_coder_round_trips_and_the_size_sample_skips_a_top_level_packed():
    coder = coders.FastPrimitivesCoder().get_impl()
    _CountsPickling.pickled = 0
    packed = Packed([_CountsPickling()])
    size, observables = coder.get_estimated_size_and_observables(packed)
    assert _CountsPickling.pickled == 0 and observables  # not encoded for the sample
    keyed = coder.decode(coder.encode((3, packed)))
    assert keyed[0] == 3 and isinstance(keyed[1].value[0], _CountsPickling) and _CountsPickling.pickled == 1


def test_inside_passed_by_reference_the_payload_is_shared_not_pickled():
    coder = coders.FastPrimitivesCoder().get_impl()
    _CountsPickling.pickled = 0
    payload = [_CountsPickling(), {"k": [1]}]
    with passed_by_reference():
        encoded = coder.encode((3, Packed(payload)))
        with passed_by_reference():  # nested: the outer block's table
            again = coder.encode(Packed(payload))
        shard, decoded = coder.decode(encoded)
        assert shard == 3 and decoded.value is payload and coder.decode(again).value is payload
        assert coder.decode(encoded)[1].value is payload  # decoded as often as the runner likes
    assert _CountsPickling.pickled == 0
    with pytest.raises(pickle.UnpicklingError, match="outside the run"):
        coder.decode(encoded)
    # Outside a block (and on another thread inside one) the payload is pickled as before.
    outside = coder.decode(coder.encode(Packed(payload)))
    assert outside.value is not payload and outside.value[1] == {"k": [1]} and _CountsPickling.pickled == 1
    with passed_by_reference():
        other: list = []
        thread = threading.Thread(target=lambda: other.append(coder.decode(coder.encode(Packed(payload)))))
        thread.start()
        thread.join()
    assert other[0].value is not payload and _CountsPickling.pickled == 2
