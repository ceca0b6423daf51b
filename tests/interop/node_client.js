// Non-Python interop client: calls warpsvc.v1.WarpService with @grpc/grpc-js + @grpc/proto-loader,
// straight from protos/warpsvc/v1/warp.proto (no generated code).
// Usage: node tests/interop/node_client.js HOST:PORT < request.json > result.json
//   request.json: {"image": {"shape": [H, W, C], "data": "<base64 uint8>"}, "matrix": [6 numbers]}
//   result.json:  {"warp": Tensor, "determinant": Tensor, "error": {"code", "details"}}
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

(async () => {
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
