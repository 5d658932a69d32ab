"""``Packed`` pickles its payload once, however often it is encoded, and Beam's size sample does not
encode a top-level one."""

from __future__ import annotations

import pickle

from apache_beam.coders import coders

from pipelines.packed import Packed


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
