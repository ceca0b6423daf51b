"""Regressions found by the hostile-input and security work (docs/reliability.md, findings)."""

from __future__ import annotations

import grpc
import pytest
from interop.harness import inprocess_server

from warpsvc_api.v1 import warp_pb2 as pb
from warpsvc_api.v1 import warp_pb2_grpc


@pytest.mark.parametrize("rpc", ["Warp", "JacobianDeterminant", "Align"])
def test_unparseable_request_bytes_are_invalid_argument(rpc):
    with inprocess_server() as srv, grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
        with pytest.raises(grpc.RpcError) as exc:
            ch.unary_unary(f"/warpsvc.v1.WarpService/{rpc}")(b"\xff\xff\xff", timeout=10)
        assert exc.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert exc.value.details().startswith("request:"), exc.value.details()
        # and the server keeps serving
        det = warp_pb2_grpc.WarpServiceStub(ch).JacobianDeterminant(
            pb.JacobianDeterminantRequest(
                transforms=[pb.Transform(affine=pb.AffineTransform(matrix=[1, 0, 0, 0, 1, 0]))],
                output_shape=pb.ImageSize(height=2, width=2)), timeout=10)
        assert list(det.determinant.shape) == [2, 2]


def test_token_refusals_are_not_counted_as_running_calls():
    """A refused call used to stay counted in the drain gate, so SIGTERM waited the full grace."""
    with inprocess_server(token="s3cret", grace_seconds=5) as srv:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as exc:
                    warp_pb2_grpc.WarpServiceStub(ch).Warp(pb.WarpRequest(), timeout=10)
                assert exc.value.code() is grpc.StatusCode.UNAUTHENTICATED
        assert srv.gate.active == 0


def test_shed_calls_do_not_stall_shutdown():
    """gRPC sheds calls over ``max_concurrent_rpcs`` after the interceptors ran (the gate counted
    them, no handler ever runs): draining must still end once nothing accepted is left, not
    wait out the whole grace period."""
    import threading
    import time

    import numpy as np

    from warpsvc import AffineTransform
    from warpsvc_api import convert

    image = np.random.default_rng(5).random((600, 600)).astype(np.float32)
    request = pb.WarpRequest(
        image=pb.Image(tensor=pb.Tensor(shape=[600, 600], dtype=pb.DTYPE_FLOAT32, data=image.tobytes())),
        transforms=convert.transforms(AffineTransform([[0.5, 0.1, 0], [0.0, 0.5, 0]])),
        antialias=True, intensity=pb.INTENSITY_CONSERVE)
    codes = []
    with inprocess_server(max_concurrent_rpcs=1, threads=1, grace_seconds=20) as srv:
        with grpc.insecure_channel(f"127.0.0.1:{srv.port}") as ch:
            stub = warp_pb2_grpc.WarpServiceStub(ch)

            def call():
                try:
                    stub.Warp(request, timeout=60)
                    codes.append(grpc.StatusCode.OK)
                except grpc.RpcError as err:
                    codes.append(err.code())

            threads = [threading.Thread(target=call) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(90)
        assert grpc.StatusCode.RESOURCE_EXHAUSTED in codes and grpc.StatusCode.OK in codes, codes
        t0 = time.monotonic()
        assert srv.gate.drain(20.0)
        assert time.monotonic() - t0 < 5.0  # far below the 20 s grace
