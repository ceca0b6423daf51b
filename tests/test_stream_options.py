"""AlignStream set-up options on the wire: ``None`` is the library's ``None`` where the option's
vocabulary has one (``photometric=None`` -> PHOTOMETRIC_NONE, read back as ``None``), absent is
the library default, and the server hands the library exactly what the client said."""

from __future__ import annotations

import numpy as np
import pytest

from warpsvc_api import stream
from warpsvc_api.v1 import warp_pb2 as pb

REF = np.zeros((8, 8), np.uint8)


def _setup(**options) -> pb.AlignStreamSetup:
    msg = pb.AlignStreamRequest.FromString(stream.setup_request(REF, "translation", **options).join())
    return msg.setup


@pytest.mark.parametrize("options, wire_value, library", [
    ({"photometric": None}, pb.PHOTOMETRIC_NONE, {"photometric": None}),
    ({"photometric": "gain_bias"}, pb.PHOTOMETRIC_GAIN_BIAS, {"photometric": "gain_bias"}),
    ({}, pb.PHOTOMETRIC_UNSPECIFIED, {}),
])
def test_photometric_none_is_sent_as_none(options, wire_value, library):
    setup = _setup(**options)
    assert setup.options.photometric == wire_value
    sequence, pairwise = stream.setup_options(setup)
    assert {k: v for k, v in pairwise.items() if k == "photometric"} == library
    assert sequence["model"] == "translation"


def test_robust_none_and_unset_numbers():
    setup = _setup(robust=None, max_iterations=None, max_keyframes=None)
    assert setup.options.robust == pb.ROBUST_LOSS_NONE
    sequence, pairwise = stream.setup_options(setup)
    assert pairwise == {"robust": None} and "max_keyframes" not in sequence


@pytest.mark.parametrize("value", [0.0, 0.5, -1.0])
def test_min_zncc_has_presence(value):
    """0 is a valid threshold: sent with presence and read back as given; absent or None is
    the library default (left out)."""
    setup = _setup(min_zncc=value)
    assert setup.options.HasField("min_zncc") and setup.options.min_zncc == value
    assert stream.setup_options(setup)[1] == {"min_zncc": value}
    for unset in (_setup(), _setup(min_zncc=None)):
        assert not unset.options.HasField("min_zncc") and "min_zncc" not in stream.setup_options(unset)[1]


def test_min_zncc_not_a_number_is_refused_before_sending():
    from warpsvc_api.convert import InvalidArgumentError

    with pytest.raises(InvalidArgumentError) as info:
        _setup(min_zncc="high")
    assert info.value.field == "min_zncc"
