"""The warpsvc protocol, shared by the server and the client, importing neither.

* :mod:`.v1` -- the generated code of ``protos/warpsvc/v1/warp.proto`` (proto package
  ``warpsvc.v1``; ``bash scripts/gen_protos.sh``, never edited by hand);
* :mod:`.wire` -- the one zero-copy reader/writer of tensor payloads (by field numbers);
* :mod:`.vocab` -- option names derived from the proto enums;
* :mod:`.convert` -- every message <-> the library's values, both directions;
* :mod:`.status` -- core errors <-> ``google.rpc.Status`` with ``BadRequest`` details.

Dependencies: numpy, protobuf, grpcio(-status) and the numpy-only parts of the library
(:mod:`warpsvc.core.errors`, :mod:`warpsvc.core.transforms`); never OpenCV, numba, the
resampler or the server (tests/test_layers.py checks it on real imports).
"""
