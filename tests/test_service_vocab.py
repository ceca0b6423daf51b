"""The option vocabulary derived from the proto enums is exactly the library's."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from warpsvc.core import sampling
from warpsvc.core.align import options as align_options
from warpsvc.core.errors import InvalidArgumentError
from warpsvc.core.transforms import MODELS
from warpsvc.core.validate import SUPPORTED_DTYPES
from warpsvc_api import vocab
from warpsvc_api.v1 import warp_pb2 as pb

# `warpsvc.core.warp` the attribute is the function (lazy namespace); the module by its name:
warp_module = importlib.import_module("warpsvc.core.warp")

LIBRARY = {
    "interpolation": (vocab.INTERPOLATION, set(sampling.INTERPOLATIONS)),
    "border": (vocab.BORDER, set(sampling.BORDERS)),
    "intensity": (vocab.INTENSITY, set(warp_module.INTENSITIES)),
    "model": (vocab.MOTION_MODEL, set(MODELS)),
    "robust": (vocab.ROBUST_LOSS, set(align_options.ROBUST_LOSSES)),
    "photometric": (vocab.PHOTOMETRIC, set(align_options.PHOTOMETRIC_OPTIONS)),
    "search": (vocab.SEARCH, set(align_options.SEARCHES)),
    "denoise": (vocab.DENOISE, set(align_options.DENOISE_OPTIONS)),
    "dtype": (vocab.DTYPE, {np.dtype(d).name for d in SUPPORTED_DTYPES}),
}


@pytest.mark.parametrize("name", LIBRARY)
def test_names_match_the_library(name):
    words, library = LIBRARY[name]
    assert set(words) == library


@pytest.mark.parametrize("words", [v for v in vars(vocab).values() if isinstance(v, vocab.Vocabulary)])
def test_round_trip_and_zero_is_the_default(words):
    for option, value in words.values.items():
        assert words.from_wire(words.to_wire(option)) == option and value != 0
    assert words.from_wire(0) is vocab.DEFAULT
    assert len(words.values) == len(words.enum_type.keys()) - 1  # every value but *_UNSPECIFIED


def test_unknown_values_name_the_field():
    with pytest.raises(InvalidArgumentError) as info:
        vocab.BORDER.from_wire(42)
    assert info.value.field == "border"
    with pytest.raises(InvalidArgumentError) as info:
        vocab.INTERPOLATION.to_wire("bicubic", "options.interpolation")
    assert info.value.field == "options.interpolation" and "'bicubic'" in info.value.message


def test_response_forms_and_formats():
    assert set(vocab.RESPONSE_FORM) == {"tensor", "png", "jpeg", "tiff"}
    assert set(vocab.IMAGE_FORMAT) == {"png", "jpeg", "tiff"}
    assert vocab.ROBUST_LOSS.to_wire(None) == pb.ROBUST_LOSS_NONE
