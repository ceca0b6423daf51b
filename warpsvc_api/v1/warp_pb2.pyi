from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Dtype(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DTYPE_UNSPECIFIED: _ClassVar[Dtype]
    DTYPE_UINT8: _ClassVar[Dtype]
    DTYPE_UINT16: _ClassVar[Dtype]
    DTYPE_FLOAT32: _ClassVar[Dtype]
    DTYPE_FLOAT64: _ClassVar[Dtype]

class ImageFormat(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_FORMAT_UNSPECIFIED: _ClassVar[ImageFormat]
    IMAGE_FORMAT_PNG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_JPEG: _ClassVar[ImageFormat]
    IMAGE_FORMAT_TIFF: _ClassVar[ImageFormat]

class ResponseForm(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESPONSE_FORM_UNSPECIFIED: _ClassVar[ResponseForm]
    RESPONSE_FORM_TENSOR: _ClassVar[ResponseForm]
    RESPONSE_FORM_PNG: _ClassVar[ResponseForm]
    RESPONSE_FORM_JPEG: _ClassVar[ResponseForm]
    RESPONSE_FORM_TIFF: _ClassVar[ResponseForm]

class Interpolation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTERPOLATION_UNSPECIFIED: _ClassVar[Interpolation]
    INTERPOLATION_NEAREST: _ClassVar[Interpolation]
    INTERPOLATION_LINEAR: _ClassVar[Interpolation]
    INTERPOLATION_CUBIC: _ClassVar[Interpolation]
    INTERPOLATION_LANCZOS: _ClassVar[Interpolation]

class Border(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BORDER_UNSPECIFIED: _ClassVar[Border]
    BORDER_CONSTANT: _ClassVar[Border]
    BORDER_REPLICATE: _ClassVar[Border]
    BORDER_REFLECT: _ClassVar[Border]
    BORDER_SYMMETRIC: _ClassVar[Border]
    BORDER_WRAP: _ClassVar[Border]

class Intensity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INTENSITY_UNSPECIFIED: _ClassVar[Intensity]
    INTENSITY_PLAIN: _ClassVar[Intensity]
    INTENSITY_CONSERVE: _ClassVar[Intensity]

class MotionModel(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOTION_MODEL_UNSPECIFIED: _ClassVar[MotionModel]
    MOTION_MODEL_TRANSLATION: _ClassVar[MotionModel]
    MOTION_MODEL_EUCLIDEAN: _ClassVar[MotionModel]
    MOTION_MODEL_SIMILARITY: _ClassVar[MotionModel]
    MOTION_MODEL_AFFINE: _ClassVar[MotionModel]
    MOTION_MODEL_HOMOGRAPHY: _ClassVar[MotionModel]

class RobustLoss(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROBUST_LOSS_UNSPECIFIED: _ClassVar[RobustLoss]
    ROBUST_LOSS_NONE: _ClassVar[RobustLoss]
    ROBUST_LOSS_HUBER: _ClassVar[RobustLoss]
    ROBUST_LOSS_TUKEY: _ClassVar[RobustLoss]

class Photometric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHOTOMETRIC_UNSPECIFIED: _ClassVar[Photometric]
    PHOTOMETRIC_NONE: _ClassVar[Photometric]
    PHOTOMETRIC_GAIN_BIAS: _ClassVar[Photometric]
    PHOTOMETRIC_AUTO: _ClassVar[Photometric]

class Search(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEARCH_UNSPECIFIED: _ClassVar[Search]
    SEARCH_AUTO: _ClassVar[Search]
    SEARCH_LOCAL: _ClassVar[Search]
    SEARCH_GLOBAL: _ClassVar[Search]

class Denoise(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DENOISE_UNSPECIFIED: _ClassVar[Denoise]
    DENOISE_NONE: _ClassVar[Denoise]
    DENOISE_AUTO: _ClassVar[Denoise]

class Channels(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHANNELS_UNSPECIFIED: _ClassVar[Channels]
    CHANNELS_MEAN: _ClassVar[Channels]
    CHANNELS_ALL: _ClassVar[Channels]

class MotionPrior(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MOTION_PRIOR_UNSPECIFIED: _ClassVar[MotionPrior]
    MOTION_PRIOR_STATIC: _ClassVar[MotionPrior]
    MOTION_PRIOR_CONSTANT_VELOCITY: _ClassVar[MotionPrior]
DTYPE_UNSPECIFIED: Dtype
DTYPE_UINT8: Dtype
DTYPE_UINT16: Dtype
DTYPE_FLOAT32: Dtype
DTYPE_FLOAT64: Dtype
IMAGE_FORMAT_UNSPECIFIED: ImageFormat
IMAGE_FORMAT_PNG: ImageFormat
IMAGE_FORMAT_JPEG: ImageFormat
IMAGE_FORMAT_TIFF: ImageFormat
RESPONSE_FORM_UNSPECIFIED: ResponseForm
RESPONSE_FORM_TENSOR: ResponseForm
RESPONSE_FORM_PNG: ResponseForm
RESPONSE_FORM_JPEG: ResponseForm
RESPONSE_FORM_TIFF: ResponseForm
INTERPOLATION_UNSPECIFIED: Interpolation
INTERPOLATION_NEAREST: Interpolation
INTERPOLATION_LINEAR: Interpolation
INTERPOLATION_CUBIC: Interpolation
INTERPOLATION_LANCZOS: Interpolation
BORDER_UNSPECIFIED: Border
BORDER_CONSTANT: Border
BORDER_REPLICATE: Border
BORDER_REFLECT: Border
BORDER_SYMMETRIC: Border
BORDER_WRAP: Border
INTENSITY_UNSPECIFIED: Intensity
INTENSITY_PLAIN: Intensity
INTENSITY_CONSERVE: Intensity
MOTION_MODEL_UNSPECIFIED: MotionModel
MOTION_MODEL_TRANSLATION: MotionModel
MOTION_MODEL_EUCLIDEAN: MotionModel
MOTION_MODEL_SIMILARITY: MotionModel
MOTION_MODEL_AFFINE: MotionModel
MOTION_MODEL_HOMOGRAPHY: MotionModel
ROBUST_LOSS_UNSPECIFIED: RobustLoss
ROBUST_LOSS_NONE: RobustLoss
ROBUST_LOSS_HUBER: RobustLoss
ROBUST_LOSS_TUKEY: RobustLoss
PHOTOMETRIC_UNSPECIFIED: Photometric
PHOTOMETRIC_NONE: Photometric
PHOTOMETRIC_GAIN_BIAS: Photometric
PHOTOMETRIC_AUTO: Photometric
SEARCH_UNSPECIFIED: Search
SEARCH_AUTO: Search
SEARCH_LOCAL: Search
SEARCH_GLOBAL: Search
DENOISE_UNSPECIFIED: Denoise
DENOISE_NONE: Denoise
DENOISE_AUTO: Denoise
CHANNELS_UNSPECIFIED: Channels
CHANNELS_MEAN: Channels
CHANNELS_ALL: Channels
MOTION_PRIOR_UNSPECIFIED: MotionPrior
MOTION_PRIOR_STATIC: MotionPrior
MOTION_PRIOR_CONSTANT_VELOCITY: MotionPrior

class Tensor(_message.Message):
    __slots__ = ("shape", "dtype", "data")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    dtype: Dtype
    data: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., dtype: _Optional[_Union[Dtype, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class EncodedImage(_message.Message):
    __slots__ = ("format", "data")
    FORMAT_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    format: ImageFormat
    data: bytes
    def __init__(self, format: _Optional[_Union[ImageFormat, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class Image(_message.Message):
    __slots__ = ("tensor", "encoded")
    TENSOR_FIELD_NUMBER: _ClassVar[int]
    ENCODED_FIELD_NUMBER: _ClassVar[int]
    tensor: Tensor
    encoded: EncodedImage
    def __init__(self, tensor: _Optional[_Union[Tensor, _Mapping]] = ..., encoded: _Optional[_Union[EncodedImage, _Mapping]] = ...) -> None: ...

class ImageSize(_message.Message):
    __slots__ = ("height", "width")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ...) -> None: ...

class Point(_message.Message):
    __slots__ = ("x", "y")
    X_FIELD_NUMBER: _ClassVar[int]
    Y_FIELD_NUMBER: _ClassVar[int]
    x: float
    y: float
    def __init__(self, x: _Optional[float] = ..., y: _Optional[float] = ...) -> None: ...

class AffineTransform(_message.Message):
    __slots__ = ("matrix",)
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    matrix: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, matrix: _Optional[_Iterable[float]] = ...) -> None: ...

class HomographyTransform(_message.Message):
    __slots__ = ("matrix",)
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    matrix: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, matrix: _Optional[_Iterable[float]] = ...) -> None: ...

class PolarTransform(_message.Message):
    __slots__ = ("center", "max_radius", "polar_shape", "log", "inverse", "cartesian_shape", "opencv_sampling")
    CENTER_FIELD_NUMBER: _ClassVar[int]
    MAX_RADIUS_FIELD_NUMBER: _ClassVar[int]
    POLAR_SHAPE_FIELD_NUMBER: _ClassVar[int]
    LOG_FIELD_NUMBER: _ClassVar[int]
    INVERSE_FIELD_NUMBER: _ClassVar[int]
    CARTESIAN_SHAPE_FIELD_NUMBER: _ClassVar[int]
    OPENCV_SAMPLING_FIELD_NUMBER: _ClassVar[int]
    center: Point
    max_radius: float
    polar_shape: ImageSize
    log: bool
    inverse: bool
    cartesian_shape: ImageSize
    opencv_sampling: bool
    def __init__(self, center: _Optional[_Union[Point, _Mapping]] = ..., max_radius: _Optional[float] = ..., polar_shape: _Optional[_Union[ImageSize, _Mapping]] = ..., log: _Optional[bool] = ..., inverse: _Optional[bool] = ..., cartesian_shape: _Optional[_Union[ImageSize, _Mapping]] = ..., opencv_sampling: _Optional[bool] = ...) -> None: ...

class Transform(_message.Message):
    __slots__ = ("affine", "homography", "polar")
    AFFINE_FIELD_NUMBER: _ClassVar[int]
    HOMOGRAPHY_FIELD_NUMBER: _ClassVar[int]
    POLAR_FIELD_NUMBER: _ClassVar[int]
    affine: AffineTransform
    homography: HomographyTransform
    polar: PolarTransform
    def __init__(self, affine: _Optional[_Union[AffineTransform, _Mapping]] = ..., homography: _Optional[_Union[HomographyTransform, _Mapping]] = ..., polar: _Optional[_Union[PolarTransform, _Mapping]] = ...) -> None: ...

class WarpRequest(_message.Message):
    __slots__ = ("image", "transforms", "output_shape", "interpolation", "border", "border_value", "intensity", "antialias", "response_form", "jpeg_quality")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    BORDER_FIELD_NUMBER: _ClassVar[int]
    BORDER_VALUE_FIELD_NUMBER: _ClassVar[int]
    INTENSITY_FIELD_NUMBER: _ClassVar[int]
    ANTIALIAS_FIELD_NUMBER: _ClassVar[int]
    RESPONSE_FORM_FIELD_NUMBER: _ClassVar[int]
    JPEG_QUALITY_FIELD_NUMBER: _ClassVar[int]
    image: Image
    transforms: _containers.RepeatedCompositeFieldContainer[Transform]
    output_shape: ImageSize
    interpolation: Interpolation
    border: Border
    border_value: float
    intensity: Intensity
    antialias: bool
    response_form: ResponseForm
    jpeg_quality: int
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ..., transforms: _Optional[_Iterable[_Union[Transform, _Mapping]]] = ..., output_shape: _Optional[_Union[ImageSize, _Mapping]] = ..., interpolation: _Optional[_Union[Interpolation, str]] = ..., border: _Optional[_Union[Border, str]] = ..., border_value: _Optional[float] = ..., intensity: _Optional[_Union[Intensity, str]] = ..., antialias: _Optional[bool] = ..., response_form: _Optional[_Union[ResponseForm, str]] = ..., jpeg_quality: _Optional[int] = ...) -> None: ...

class WarpResponse(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class JacobianDeterminantRequest(_message.Message):
    __slots__ = ("transforms", "output_shape", "dtype")
    TRANSFORMS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_SHAPE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    transforms: _containers.RepeatedCompositeFieldContainer[Transform]
    output_shape: ImageSize
    dtype: Dtype
    def __init__(self, transforms: _Optional[_Iterable[_Union[Transform, _Mapping]]] = ..., output_shape: _Optional[_Union[ImageSize, _Mapping]] = ..., dtype: _Optional[_Union[Dtype, str]] = ...) -> None: ...

class JacobianDeterminantResponse(_message.Message):
    __slots__ = ("determinant",)
    DETERMINANT_FIELD_NUMBER: _ClassVar[int]
    determinant: Tensor
    def __init__(self, determinant: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class AlignRequest(_message.Message):
    __slots__ = ("template", "image", "model", "init", "levels", "template_mask", "image_mask", "robust", "photometric", "max_iterations", "tolerance", "time_budget_seconds", "search", "max_corner_error", "denoise", "min_zncc")
    TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INIT_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    TEMPLATE_MASK_FIELD_NUMBER: _ClassVar[int]
    IMAGE_MASK_FIELD_NUMBER: _ClassVar[int]
    ROBUST_FIELD_NUMBER: _ClassVar[int]
    PHOTOMETRIC_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    TIME_BUDGET_SECONDS_FIELD_NUMBER: _ClassVar[int]
    SEARCH_FIELD_NUMBER: _ClassVar[int]
    MAX_CORNER_ERROR_FIELD_NUMBER: _ClassVar[int]
    DENOISE_FIELD_NUMBER: _ClassVar[int]
    MIN_ZNCC_FIELD_NUMBER: _ClassVar[int]
    template: Image
    image: Image
    model: MotionModel
    init: _containers.RepeatedScalarFieldContainer[float]
    levels: int
    template_mask: Image
    image_mask: Image
    robust: RobustLoss
    photometric: Photometric
    max_iterations: int
    tolerance: float
    time_budget_seconds: float
    search: Search
    max_corner_error: float
    denoise: Denoise
    min_zncc: float
    def __init__(self, template: _Optional[_Union[Image, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., model: _Optional[_Union[MotionModel, str]] = ..., init: _Optional[_Iterable[float]] = ..., levels: _Optional[int] = ..., template_mask: _Optional[_Union[Image, _Mapping]] = ..., image_mask: _Optional[_Union[Image, _Mapping]] = ..., robust: _Optional[_Union[RobustLoss, str]] = ..., photometric: _Optional[_Union[Photometric, str]] = ..., max_iterations: _Optional[int] = ..., tolerance: _Optional[float] = ..., time_budget_seconds: _Optional[float] = ..., search: _Optional[_Union[Search, str]] = ..., max_corner_error: _Optional[float] = ..., denoise: _Optional[_Union[Denoise, str]] = ..., min_zncc: _Optional[float] = ...) -> None: ...

class LevelCosts(_message.Message):
    __slots__ = ("costs",)
    COSTS_FIELD_NUMBER: _ClassVar[int]
    costs: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, costs: _Optional[_Iterable[float]] = ...) -> None: ...

class AlignResponse(_message.Message):
    __slots__ = ("matrix", "inverse", "converged", "reason", "iterations", "rms_error", "zncc", "cost_history", "covariance", "corner_covariance", "overlap", "gain", "bias", "model", "levels", "elapsed_seconds", "chart", "start")
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    INVERSE_FIELD_NUMBER: _ClassVar[int]
    CONVERGED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    RMS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ZNCC_FIELD_NUMBER: _ClassVar[int]
    COST_HISTORY_FIELD_NUMBER: _ClassVar[int]
    COVARIANCE_FIELD_NUMBER: _ClassVar[int]
    CORNER_COVARIANCE_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_FIELD_NUMBER: _ClassVar[int]
    GAIN_FIELD_NUMBER: _ClassVar[int]
    BIAS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    CHART_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    matrix: _containers.RepeatedScalarFieldContainer[float]
    inverse: _containers.RepeatedScalarFieldContainer[float]
    converged: bool
    reason: str
    iterations: _containers.RepeatedScalarFieldContainer[int]
    rms_error: float
    zncc: float
    cost_history: _containers.RepeatedCompositeFieldContainer[LevelCosts]
    covariance: Tensor
    corner_covariance: Tensor
    overlap: float
    gain: _containers.RepeatedScalarFieldContainer[float]
    bias: _containers.RepeatedScalarFieldContainer[float]
    model: MotionModel
    levels: int
    elapsed_seconds: float
    chart: _containers.RepeatedScalarFieldContainer[float]
    start: str
    def __init__(self, matrix: _Optional[_Iterable[float]] = ..., inverse: _Optional[_Iterable[float]] = ..., converged: _Optional[bool] = ..., reason: _Optional[str] = ..., iterations: _Optional[_Iterable[int]] = ..., rms_error: _Optional[float] = ..., zncc: _Optional[float] = ..., cost_history: _Optional[_Iterable[_Union[LevelCosts, _Mapping]]] = ..., covariance: _Optional[_Union[Tensor, _Mapping]] = ..., corner_covariance: _Optional[_Union[Tensor, _Mapping]] = ..., overlap: _Optional[float] = ..., gain: _Optional[_Iterable[float]] = ..., bias: _Optional[_Iterable[float]] = ..., model: _Optional[_Union[MotionModel, str]] = ..., levels: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ..., chart: _Optional[_Iterable[float]] = ..., start: _Optional[str] = ...) -> None: ...

class SequenceOptions(_message.Message):
    __slots__ = ("reanchor", "anchor_min_overlap", "keyframe_overlap", "trust_overlap", "max_keyframes", "max_anchor_attempts", "anchor_margin", "motion_prior", "fuse", "robust", "photometric", "levels", "max_iterations", "tolerance", "channels", "min_zncc")
    REANCHOR_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_MIN_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    KEYFRAME_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    TRUST_OVERLAP_FIELD_NUMBER: _ClassVar[int]
    MAX_KEYFRAMES_FIELD_NUMBER: _ClassVar[int]
    MAX_ANCHOR_ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_MARGIN_FIELD_NUMBER: _ClassVar[int]
    MOTION_PRIOR_FIELD_NUMBER: _ClassVar[int]
    FUSE_FIELD_NUMBER: _ClassVar[int]
    ROBUST_FIELD_NUMBER: _ClassVar[int]
    PHOTOMETRIC_FIELD_NUMBER: _ClassVar[int]
    LEVELS_FIELD_NUMBER: _ClassVar[int]
    MAX_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    MIN_ZNCC_FIELD_NUMBER: _ClassVar[int]
    reanchor: bool
    anchor_min_overlap: float
    keyframe_overlap: float
    trust_overlap: float
    max_keyframes: int
    max_anchor_attempts: int
    anchor_margin: int
    motion_prior: MotionPrior
    fuse: bool
    robust: RobustLoss
    photometric: Photometric
    levels: int
    max_iterations: int
    tolerance: float
    channels: Channels
    min_zncc: float
    def __init__(self, reanchor: _Optional[bool] = ..., anchor_min_overlap: _Optional[float] = ..., keyframe_overlap: _Optional[float] = ..., trust_overlap: _Optional[float] = ..., max_keyframes: _Optional[int] = ..., max_anchor_attempts: _Optional[int] = ..., anchor_margin: _Optional[int] = ..., motion_prior: _Optional[_Union[MotionPrior, str]] = ..., fuse: _Optional[bool] = ..., robust: _Optional[_Union[RobustLoss, str]] = ..., photometric: _Optional[_Union[Photometric, str]] = ..., levels: _Optional[int] = ..., max_iterations: _Optional[int] = ..., tolerance: _Optional[float] = ..., channels: _Optional[_Union[Channels, str]] = ..., min_zncc: _Optional[float] = ...) -> None: ...

class AlignStreamSetup(_message.Message):
    __slots__ = ("reference", "model", "options", "reference_index")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_INDEX_FIELD_NUMBER: _ClassVar[int]
    reference: Image
    model: MotionModel
    options: SequenceOptions
    reference_index: int
    def __init__(self, reference: _Optional[_Union[Image, _Mapping]] = ..., model: _Optional[_Union[MotionModel, str]] = ..., options: _Optional[_Union[SequenceOptions, _Mapping]] = ..., reference_index: _Optional[int] = ...) -> None: ...

class AlignStreamFrame(_message.Message):
    __slots__ = ("image",)
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    image: Image
    def __init__(self, image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class AlignStreamRequest(_message.Message):
    __slots__ = ("setup", "frame")
    SETUP_FIELD_NUMBER: _ClassVar[int]
    FRAME_FIELD_NUMBER: _ClassVar[int]
    setup: AlignStreamSetup
    frame: AlignStreamFrame
    def __init__(self, setup: _Optional[_Union[AlignStreamSetup, _Mapping]] = ..., frame: _Optional[_Union[AlignStreamFrame, _Mapping]] = ...) -> None: ...

class AlignStreamResponse(_message.Message):
    __slots__ = ("index", "matrix", "inverse", "registered", "method", "reason", "hops", "anchor", "previous", "step", "covariance", "corner_sd", "zncc", "rms_error", "alignments", "elapsed_seconds", "reference_shape")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    MATRIX_FIELD_NUMBER: _ClassVar[int]
    INVERSE_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    HOPS_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    COVARIANCE_FIELD_NUMBER: _ClassVar[int]
    CORNER_SD_FIELD_NUMBER: _ClassVar[int]
    ZNCC_FIELD_NUMBER: _ClassVar[int]
    RMS_ERROR_FIELD_NUMBER: _ClassVar[int]
    ALIGNMENTS_FIELD_NUMBER: _ClassVar[int]
    ELAPSED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    index: int
    matrix: _containers.RepeatedScalarFieldContainer[float]
    inverse: _containers.RepeatedScalarFieldContainer[float]
    registered: bool
    method: str
    reason: str
    hops: int
    anchor: int
    previous: int
    step: _containers.RepeatedScalarFieldContainer[float]
    covariance: Tensor
    corner_sd: _containers.RepeatedScalarFieldContainer[float]
    zncc: float
    rms_error: float
    alignments: int
    elapsed_seconds: float
    reference_shape: ImageSize
    def __init__(self, index: _Optional[int] = ..., matrix: _Optional[_Iterable[float]] = ..., inverse: _Optional[_Iterable[float]] = ..., registered: _Optional[bool] = ..., method: _Optional[str] = ..., reason: _Optional[str] = ..., hops: _Optional[int] = ..., anchor: _Optional[int] = ..., previous: _Optional[int] = ..., step: _Optional[_Iterable[float]] = ..., covariance: _Optional[_Union[Tensor, _Mapping]] = ..., corner_sd: _Optional[_Iterable[float]] = ..., zncc: _Optional[float] = ..., rms_error: _Optional[float] = ..., alignments: _Optional[int] = ..., elapsed_seconds: _Optional[float] = ..., reference_shape: _Optional[_Union[ImageSize, _Mapping]] = ...) -> None: ...
