// Non-Python interop client: calls warpsvc.v1.WarpService with @grpc/grpc-js + @grpc/proto-loader,
// straight from protos/warpsvc/v1/warp.proto (no generated code).
// Usage: node tests/interop/node_client.js HOST:PORT < request.json > result.json
//   request.json: {"image": {"shape": [H, W, C], "data": "<base64 uint8>"}, "matrix": [6 numbers]}
//   result.json:  {"warp": Tensor, "determinant": Tensor, "error": {"code", "details"}}
// or, with {"stream": {"frames": [{"shape": [H, W], "data": "<base64 uint8>"}, ...], "bad": bool}}:
//   AlignStream (bidi): frames[0] is the reference (reference_index 0), the rest are streamed;
//   "bad" appends a frame with too few bytes. result.json: {"stream": [responses], "error"}
"use strict";
const path = require("path");
const fs = require("fs");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const root = path.resolve(__dirname, "..", "..");
const definition = protoLoader.loadSync("warpsvc/v1/warp.proto", {
  includeDirs: [path.join(root, "protos")],
  keepCase: true,
  longs: Number,
  enums: String,
  defaults: true,
  oneofs: true,
});
const pkg = grpc.loadPackageDefinition(definition).warpsvc.v1;
const client = new pkg.WarpService(process.argv[2], grpc.credentials.createInsecure(), {
  "grpc.max_send_message_length": 64 << 20,
  "grpc.max_receive_message_length": 64 << 20,
});
const input = JSON.parse(fs.readFileSync(0, "utf8"));
const deadline = () => new Date(Date.now() + 20000);
const tensorJson = (t) => ({ shape: t.shape, dtype: t.dtype, data: Buffer.from(t.data).toString("base64") });

function call(method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, { deadline: deadline() }, (err, resp) => (err ? reject(err) : resolve(resp))));
}

const uint8Image = (img) => ({ tensor: { shape: img.shape, dtype: "DTYPE_UINT8", data: Buffer.from(img.data, "base64") } });

// AlignStream: write the setup and every frame, collect the responses until the stream ends.
function alignStream(spec) {
  return new Promise((resolve) => {
    const results = [];
    const call = client.AlignStream({ deadline: deadline() });
    call.on("data", (resp) => results.push({ index: resp.index, matrix: resp.matrix, method: resp.method,
      registered: resp.registered, reason: resp.reason, zncc: resp.zncc, corner_sd: resp.corner_sd }));
    call.on("error", (err) => resolve({ stream: results, error: { code: err.code, details: err.details } }));
    call.on("end", () => resolve({ stream: results }));
    const [reference, ...frames] = spec.frames;
    call.write({ setup: { reference: uint8Image(reference), model: "MOTION_MODEL_HOMOGRAPHY", reference_index: 0 } });
    for (const frame of frames) call.write({ frame: { image: uint8Image(frame) } });
    if (spec.bad) call.write({ frame: { image: { tensor: { shape: [4, 4], dtype: "DTYPE_UINT8", data: Buffer.alloc(3) } } } });
    call.end();
  });
}

(async () => {
  if (input.stream) {
    process.stdout.write(JSON.stringify(await alignStream(input.stream)));
    client.close();
    return;
  }
  const transforms = [{ affine: { matrix: input.matrix } }];
  const out = {};
  const warp = await call("Warp", {
    image: { tensor: { shape: input.image.shape, dtype: "DTYPE_UINT8", data: Buffer.from(input.image.data, "base64") } },
    transforms,
    interpolation: "INTERPOLATION_LINEAR",
  });
  out.warp = tensorJson(warp.image.tensor);
  const det = await call("JacobianDeterminant", {
    transforms: [{ polar: { center: { x: 20, y: 15 }, max_radius: 14, polar_shape: { height: 36, width: 20 } } }],
    output_shape: { height: 36, width: 20 },
    dtype: "DTYPE_FLOAT32",
  });
  out.determinant = tensorJson(det.determinant);
  try {
    await call("Warp", { image: { tensor: { shape: [2, 2], dtype: "DTYPE_UINT8", data: Buffer.alloc(3) } }, transforms });
  } catch (err) {
    out.error = { code: err.code, details: err.details };
  }
  process.stdout.write(JSON.stringify(out));
  client.close();
})().catch((err) => {
  process.stderr.write(String(err && err.stack ? err.stack : err) + "\n");
  process.exit(1);
});
