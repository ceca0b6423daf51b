"""``WarpClient``: the library's ``warp`` / ``jacobian_determinant`` / ``align`` over gRPC.

::

    from warpsvc_client import WarpClient
    with WarpClient("dns:///warpsvc.internal:50051", timeout=10) as client:
        out = client.warp(image, AffineTransform.from_components(rotation=0.1))   # numpy in, numpy out

Channel behaviour, set through the gRPC service config:

* **retries** on UNAVAILABLE (server restarting, a worker draining), up to ``retries`` attempts
  with exponential backoff. gRPC only retries requests that fit its per-RPC retry buffer (256 KiB
  by default), so ``grpc.per_rpc_retry_buffer_size`` is raised to the message limit;
* **round_robin** load balancing: with ``dns:///host:port`` every resolved address gets a
  connection and calls alternate between them (``SO_REUSEPORT`` workers balance connections,
  not calls);
* **deadlines**: every call carries ``timeout`` seconds (per-call override ``timeout=``);
* 64 MiB messages both ways (``max_message_bytes``), TLS (``tls=True`` / root certificates /
  client certificate) and a bearer ``token`` sent as ``authorization`` metadata;
* **traces** (:mod:`warpsvc_client.tracing`, when OpenTelemetry is installed): every call carries
  the current span's W3C ``traceparent``, so the server's span joins the caller's trace; with
  ``tracer_provider=`` each call also gets a CLIENT span of its own.

Errors: INVALID_ARGUMENT and field-specific RESOURCE_EXHAUSTED come back as the library's own
``warpsvc.InvalidArgumentError`` / ``warpsvc.ImageTooLargeError`` with ``field`` set from the
``google.rpc.BadRequest`` detail (the ``grpc.RpcError`` is chained as ``__cause__``); every other
failure raises the ``grpc.RpcError``.
"""

from __future__ import annotations

import json

import grpc
import numpy as np

from warpsvc_api import convert, status, vocab, wire
from warpsvc_api import stream as stream_api
from warpsvc_api.v1 import warp_pb2 as pb

from . import tracing

MIB = 1 << 20
SERVICE = pb.DESCRIPTOR.services_by_name["WarpService"]
WARP_IMAGE = (wire.number(pb.WarpResponse, "image"), wire.IMAGE_TENSOR)
DET_TENSOR = (wire.number(pb.JacobianDeterminantResponse, "determinant"),)


def service_config(retries: int) -> str:
    method = {"name": [{"service": SERVICE.full_name}]}
    if retries > 1:
        method["retryPolicy"] = {
            "maxAttempts": retries, "initialBackoff": "0.1s", "maxBackoff": "2s", "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        }
    return json.dumps({"methodConfig": [method], "loadBalancingConfig": [{"round_robin": {}}]})


def channel_options(max_message_bytes: int, retries: int) -> list[tuple[str, object]]:
    return [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.enable_retries", 1 if retries > 1 else 0),
        ("grpc.service_config", service_config(retries)),
        ("grpc.per_rpc_retry_buffer_size", max_message_bytes),
        ("grpc.retry_buffer_size", max(256 * MIB, 2 * max_message_bytes)),
    ]


class WarpClient:
    """A channel to a warpsvc server with the library's call signatures (see module docstring).

    Parameters
    ----------
    target : ``host:port`` or ``dns:///host:port`` (round robin over every address).
    timeout : default deadline of each call, seconds (``None``: no deadline).
    tls : use TLS (implied by ``root_certificates`` or a client certificate).
    root_certificates, private_key, certificate_chain : PEM bytes (``None``: system roots, no
        client certificate).
    server_name : override of the TLS host name to verify (tests, IP targets).
    token : bearer token sent as ``authorization: Bearer <token>``.
    max_message_bytes : message limit both ways; also the retry buffer (default 64 MiB).
    retries : attempts per call on UNAVAILABLE (1 disables retries).
    wait_for_ready : queue calls while the channel connects instead of failing fast.
    tracer_provider : an OpenTelemetry ``TracerProvider``: a CLIENT span per call (needs
        opentelemetry-instrumentation-grpc). Without it calls still propagate the current span.
    """

    def __init__(self, target: str = "127.0.0.1:50051", *, timeout: float | None = 30.0, tls: bool = False,
                 root_certificates: bytes | None = None, private_key: bytes | None = None,
                 certificate_chain: bytes | None = None, server_name: str | None = None,
                 token: str | None = None, max_message_bytes: int = 64 * MIB, retries: int = 5,
                 wait_for_ready: bool = False, options=(), tracer_provider=None):
        opts = channel_options(max_message_bytes, retries) + list(options)
        if tls or root_certificates or certificate_chain:
            if server_name:
                opts.append(("grpc.ssl_target_name_override", server_name))
            creds = grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)
            self._channel = grpc.secure_channel(target, creds, options=opts)
        else:
            self._channel = grpc.insecure_channel(target, options=opts)
        self._raw_channel = self._channel
        if tracer_provider is not None:
            self._channel = tracing.instrument_channel(self._channel, tracer_provider)
        # Without client spans, each call carries the caller's current span (if OpenTelemetry is here).
        self._propagate = tracer_provider is None and tracing.available()
        # The stub's methods, with a request serializer that also takes pre-serialised chunks.
        self._rpc = {
            m.name: self._channel.unary_unary(
                f"/{SERVICE.full_name}/{m.name}", request_serializer=wire.serialize,
                response_deserializer=wire.deserializer(getattr(pb, m.output_type.name)),
                _registered_method=True)
            for m in SERVICE.methods if not m.client_streaming
        }
        self._align_stream = self._channel.stream_stream(
            f"/{SERVICE.full_name}/AlignStream", request_serializer=wire.serialize,
            response_deserializer=wire.deserializer(pb.AlignStreamResponse), _registered_method=True)
        self._timeout = timeout
        self._metadata = (("authorization", f"Bearer {token}"),) if token else None
        self._wait_for_ready = wait_for_ready
        self.target = target

    # -- plumbing -----------------------------------------------------------------------------------
    def close(self) -> None:
        self._raw_channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _call(self, rpc, request, timeout):
        metadata = tracing.traceparent_metadata(self._metadata) if self._propagate else self._metadata
        try:
            return rpc(request, timeout=self._timeout if timeout is None else timeout, metadata=metadata or None,
                       wait_for_ready=self._wait_for_ready)
        except grpc.RpcError as err:
            translated = status.from_rpc_error(err)
            if translated is err:
                raise
            raise translated from err

    # -- the library's functions --------------------------------------------------------------------
    def warp(self, image, transform, output_shape=None, *, interpolation: str = "linear",
             border: str = "constant", border_value: float = 0.0, intensity: str = "plain",
             antialias: bool = False, response_form: str = "tensor", jpeg_quality: int = 0,
             timeout: float | None = None):
        """``warpsvc.warp`` on the server. ``image`` is a numpy array (sent raw) or the bytes of a
        PNG/JPEG/TIFF file (sent encoded). Returns a numpy array, or the encoded file's bytes when
        ``response_form`` is ``"png"``, ``"jpeg"`` or ``"tiff"``."""
        fields = convert.warp_request(
            transform, output_shape, interpolation=interpolation, border=border, border_value=border_value,
            intensity=intensity, antialias=antialias, response_form=response_form, jpeg_quality=jpeg_quality)
        request = wire.Parts.of(fields).then(convert.image_field(image, wire.number(pb.WarpRequest, "image")))
        response = self._call(self._rpc["Warp"], request, timeout)
        return convert.image_value(response.message.image, response.payload(*WARP_IMAGE))

    def jacobian_determinant(self, transform, output_shape, *, dtype=np.float64,
                             timeout: float | None = None) -> np.ndarray:
        """``warpsvc.jacobian_determinant`` on the server: ``(H, W)`` float64 or float32."""
        request = pb.JacobianDeterminantRequest(transforms=convert.transforms(transform),
                                                output_shape=convert.size(output_shape),
                                                dtype=vocab.DTYPE.to_wire(np.dtype(dtype).name, "dtype"))
        response = self._call(self._rpc["JacobianDeterminant"], request, timeout)
        return convert.array(response.message.determinant, response.payload(*DET_TENSOR), "determinant")

    def align(self, template, image, model: str = "homography", init=None, *, search: str = "auto",
              levels="auto", template_mask=None, image_mask=None, robust=None, photometric="auto",
              max_iterations=None, tolerance=None, time_budget=None, max_corner_error: float | None = 1.0,
              denoise="auto", min_zncc: float = 0.97, timeout: float | None = None):
        """``warpsvc.align`` on the server; returns a ``warpsvc.AlignResult``. The call's deadline
        also stops the server's iterations (``reason="cancelled"`` reaches no one: the client
        gets DEADLINE_EXCEEDED). ``max_iterations`` / ``tolerance`` ``None``: the server's default;
        ``max_corner_error`` (pixels) as in the library: ``None`` (or ``inf``) turns the
        ``uncertain`` check off; ``denoise`` ``"auto"`` or ``None`` as in the library;
        ``min_zncc`` the threshold of the ``low_correlation`` check, sent as given (default the
        library's 0.97; ``None`` leaves the field absent: the server's library default)."""
        fields = convert.align_request(
            model, init, search=search, levels=levels, robust=robust, photometric=photometric, max_iterations=max_iterations,
            tolerance=tolerance, time_budget=time_budget, template_mask=template_mask, image_mask=image_mask,
            max_corner_error=max_corner_error, denoise=denoise, min_zncc=min_zncc)
        request = wire.Parts.of(fields).then(*(convert.image_field(value, wire.number(pb.AlignRequest, name), name)
                                              for name, value in (("template", template), ("image", image))))
        return convert.align_result(self._call(self._rpc["Align"], request, timeout).message)

    def align_stream(self, frames, reference=0, model: str = "homography", *, timeout: float | None = None,
                     **options):
        """Register ``frames`` (an iterable of arrays or encoded files, consumed lazily) to one
        reference over the ``AlignStream`` RPC, as ``warpsvc.core.sequence.align_sequence`` does
        in-process; yields a :class:`warpsvc_api.stream.StreamFrameResult` per frame, in order,
        as the server sends them.

        ``reference`` : ``0`` (the first frame is the reference: its own result comes first) or an
        image (array or file bytes; every frame is registered to it). ``options`` : fields of
        ``SequenceOptions`` (``reanchor``, ``max_keyframes``, ``motion_prior``, ...) and of the
        pairwise ``AlignOptions`` (``robust``, ``photometric``, ``levels``, ``max_iterations``,
        ``tolerance``, ``channels``). ``timeout`` bounds the whole stream. Frames are serialised
        in gRPC's sending thread while the server registers the previous ones; flow control
        stops reading ``frames`` when the server falls behind. Errors are raised as by
        :meth:`align` (a bad frame: ``InvalidArgumentError`` with ``field="frame[i].image..."``)
        after the results before it were yielded.
        """
        frames = iter(frames)
        if isinstance(reference, (int, np.integer)) and not isinstance(reference, bool):
            if reference != 0:
                raise convert.InvalidArgumentError(
                    "a stream's reference is frame 0 or an image (an index > 0 would hold the frames before it)",
                    field="reference")
            first = next(frames, None)
            if first is None:
                return
            setup = stream_api.setup_request(first, model, reference_index=0, **options)
        else:
            setup = stream_api.setup_request(reference, model, **options)

        def requests():
            yield setup
            for frame in frames:
                yield stream_api.frame_request(frame)

        responses = self._align_stream(requests(), timeout=self._timeout if timeout is None else timeout,
                                       metadata=self._metadata, wait_for_ready=self._wait_for_ready)
        try:
            for response in responses:
                yield stream_api.frame_result(response.message)
        except grpc.RpcError as err:
            translated = status.from_rpc_error(err)
            if translated is err:
                raise
            raise translated from err
        finally:
            responses.cancel()
