"""The option vocabulary, derived once from the proto enums.

Every enum of ``warpsvc.v1`` names its values ``<PREFIX>_<NAME>``; the library spells the same
option ``"<name>"`` (``BORDER_SYMMETRIC`` <-> ``"symmetric"``, ``MOTION_MODEL_AFFINE`` <->
``"affine"``), and a value named ``NONE`` is the library's ``None`` (``ROBUST_LOSS_NONE``). The
zero value ``<PREFIX>_UNSPECIFIED`` means "the library default": :meth:`Vocabulary.from_wire`
returns :data:`DEFAULT` for it and the caller leaves the argument out, so the default lives in
the library only. Adding a border mode is one line of ``.proto`` (and the library's own table);
``tests/test_service_vocab.py`` checks these names against the library's option values.
"""

from __future__ import annotations

from warpsvc.core.errors import InvalidArgumentError

from .v1 import warp_pb2 as pb

DEFAULT = type("Default", (), {"__repr__": lambda self: "DEFAULT", "__slots__": ()})()
"""Returned for an enum's zero value: leave the option out, the library's default applies."""


class Vocabulary:
    """Library option names <-> values of one proto enum (see the module docstring)."""

    def __init__(self, enum_type, field: str):
        self.enum_type = enum_type
        self.field = field
        zero = enum_type.Name(0)
        if not zero.endswith("_UNSPECIFIED"):
            raise ValueError(f"{enum_type.DESCRIPTOR.full_name}: zero value {zero} is not *_UNSPECIFIED")
        prefix = zero[: -len("UNSPECIFIED")]
        self.values: dict[str | None, int] = {}
        for name, value in enum_type.items():
            if value:
                option = name[len(prefix):].lower()
                self.values[None if option == "none" else option] = value
        self.names = {value: option for option, value in self.values.items()}

    def __iter__(self):
        return iter(self.values)

    def to_wire(self, option, field: str | None = None) -> int:
        """The enum value of library option ``option`` (an unknown one is the library's error)."""
        try:
            return self.values[option]
        except (KeyError, TypeError):
            field = field or self.field
            raise InvalidArgumentError(f"{field} must be one of {tuple(self.values)}, got {option!r}",
                                       field=field) from None

    def from_wire(self, value: int, field: str | None = None):
        """The library option of enum value ``value``; :data:`DEFAULT` for the zero value."""
        if value == 0:
            return DEFAULT
        try:
            return self.names[value]
        except KeyError:
            raise InvalidArgumentError(
                f"unknown value {value} for {self.enum_type.DESCRIPTOR.name}", field=field or self.field) from None


INTERPOLATION = Vocabulary(pb.Interpolation, "interpolation")
BORDER = Vocabulary(pb.Border, "border")
INTENSITY = Vocabulary(pb.Intensity, "intensity")
MOTION_MODEL = Vocabulary(pb.MotionModel, "model")
ROBUST_LOSS = Vocabulary(pb.RobustLoss, "robust")
PHOTOMETRIC = Vocabulary(pb.Photometric, "photometric")
SEARCH = Vocabulary(pb.Search, "search")
DENOISE = Vocabulary(pb.Denoise, "denoise")
RESPONSE_FORM = Vocabulary(pb.ResponseForm, "response_form")
IMAGE_FORMAT = Vocabulary(pb.ImageFormat, "format")
DTYPE = Vocabulary(pb.Dtype, "dtype")  # option names are numpy's: "uint8", ..., "float64"
