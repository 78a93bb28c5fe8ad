// A deepscope client in Node.js, written from docs/protocol.md and the .proto files alone (no Python).
// It uploads a model in small chunks, reads the layer table, captures layers (multi-chunk tensors
// checked against their CRC-32), runs an analysis streaming DataBatch messages, reads the run back,
// provokes an error and decodes its google.rpc.Status details. It prints one JSON document, which
// tests/integration/test_node_client.py compares with what the Python SDK gets from the same server.
//
// usage: node client.mjs ADDRESS MODEL_FILE INPUT_FILE BATCH  (env DEEPSCOPE_TOKEN, DEEPSCOPE_PROTO_PATH)

import fs from "node:fs";
import path from "node:path";
import zlib from "node:zlib";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const [address, modelFile, inputFile, batchText] = process.argv.slice(2);
const batch = Number(batchText);
const includeDirs = process.env.DEEPSCOPE_PROTO_PATH.split(path.delimiter);
const UPLOAD_CHUNK = 1024; // small on purpose: the upload must take many chunks

const definition = protoLoader.loadSync("deepscope/v1/introspection.proto",
  { includeDirs, keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const deepscope = grpc.loadPackageDefinition(definition).deepscope.v1;
const client = new deepscope.IntrospectionService(address, grpc.credentials.createInsecure(),
  { "grpc.max_receive_message_length": 256 << 20, "grpc.max_send_message_length": 256 << 20 });

const metadata = new grpc.Metadata();
metadata.set("authorization", `Bearer ${process.env.DEEPSCOPE_TOKEN}`);
metadata.set("x-deepscope-protocol", "1");

function unary(method, request) {
  return new Promise((resolve, reject) =>
    client[method](request, metadata, (error, response) => (error ? reject(error) : resolve(response))));
}

function upload(bytes, name) {
  return new Promise((resolve, reject) => {
    const call = client.UploadModel(metadata, (error, response) => (error ? reject(error) : resolve(response.model)));
    call.write({ header: { name, total_bytes: String(bytes.length) } });
    for (let offset = 0; offset < bytes.length; offset += UPLOAD_CHUNK) {
      call.write({ chunk: bytes.subarray(offset, offset + UPLOAD_CHUNK) });
    }
    call.end();
  });
}

// A Capture/GetWeights stream: per tensor a header, its chunks in order, then done.
function tensors(call) {
  return new Promise((resolve, reject) => {
    const out = {};
    let current = null;
    let done = null;
    call.on("data", (part) => {
      if (part.part === "header") {
        current = { header: part.header, chunks: [], received: 0, chunkCount: 0 };
        out[part.header.name] = current;
      } else if (part.part === "chunk") {
        if (part.chunk.name !== current.header.name || Number(part.chunk.offset) !== current.received) {
          reject(new Error(`chunk out of order for ${part.chunk.name}`));
        }
        current.chunks.push(part.chunk.data);
        current.received += part.chunk.data.length;
        current.chunkCount += 1;
      } else {
        done = part.done;
      }
    });
    call.on("error", reject);
    call.on("end", () => {
      if (!done) return reject(new Error("the stream ended without done"));
      const result = {};
      for (const [name, t] of Object.entries(out)) {
        const data = Buffer.concat(t.chunks);
        if (data.length !== Number(t.header.total_bytes)) return reject(new Error(`${name}: short tensor`));
        if ((zlib.crc32(data) >>> 0) !== t.header.crc32) return reject(new Error(`${name}: CRC-32 mismatch`));
        result[name] = { dtype: t.header.dtype, shape: t.header.shape.map(Number), chunks: t.chunkCount,
                         data: data.toString("base64") };
      }
      resolve({ tensors: result, done: { num_tensors: done.num_tensors, device: done.device } });
    });
  });
}

function analyze(config, batches) {
  return new Promise((resolve, reject) => {
    const call = client.Analyze(metadata);
    const events = [];
    call.on("data", (event) => events.push(event));
    call.on("error", reject);
    call.on("end", () => resolve(events));
    call.write({ config });
    for (const b of batches) call.write({ batch: { inputs: [b] } });
    call.end();
  });
}

function scalars(result) {
  const out = {};
  for (const item of result.items) if (item.value === "scalar") out[item.key] = item.scalar;
  return out;
}

async function richError(promise) {
  try {
    await promise;
  } catch (error) {
    const root = protobuf.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"]
      .map((file) => includeDirs.map((dir) => path.join(dir, file)).find((p) => fs.existsSync(p))));
    const Status = root.lookupType("google.rpc.Status");
    const status = Status.decode(error.metadata.get("grpc-status-details-bin")[0]);
    const details = {};
    for (const any of status.details) {
      const type = any.type_url.split("/").pop();
      details[type.split(".").pop()] = root.lookupType(type).toObject(root.lookupType(type).decode(any.value));
    }
    return { code: error.code, message: error.details, details };
  }
  throw new Error("the call was expected to fail");
}

const info = await unary("GetServerInfo", {});
const modelBytes = fs.readFileSync(modelFile);
const model = await upload(modelBytes, "node-" + path.basename(modelFile));
const detail = await unary("GetModel", { model: model.id });
const inputBytes = fs.readFileSync(inputFile);
const inputShape = [batch, ...detail.info.inputs[0].shape.dims.slice(1).map(Number)];
const input = { name: "", dtype: "FP32", shape: inputShape, data: inputBytes };
const captured = await tensors(client.Capture({ model: model.id, inputs: [input], layers: ["conv1", "fc"] }, metadata));
const weights = await tensors(client.GetWeights({ model: model.id, layers: ["conv1"] }, metadata));

// Analysis: the same rows in two DataBatch messages.
const rowBytes = inputBytes.length / batch;
const half = Math.floor(batch / 2);
const part = (from, to) => ({ name: "", dtype: "FP32", shape: [to - from, ...inputShape.slice(1)],
                              data: inputBytes.subarray(from * rowBytes, to * rowBytes) });
const events = await analyze({
  models: [model.id], batch_size: half,
  metrics: [{ name: "cnt.node_strength" }, { name: "example.activation_moments" }], layers: ["conv1", "fc"],
}, [part(0, half), part(half, batch)]);
const finished = events.find((e) => e.event === "finished").finished;
const results = events.filter((e) => e.event === "result").map((e) => e.result)
  .map((r) => ({ metric: r.metric, layer: r.layer, status: r.status, scalars: scalars(r) }));
const run = await unary("GetRun", { run_id: finished.id });
const runs = await unary("ListRuns", { limit: 10 });

const error = await richError(unary("GetModel", { model: "no-such-model" }));
const layerError = await richError(tensors(client.Capture({ model: model.id, inputs: [input], layers: ["conv9"] }, metadata)));

console.log(JSON.stringify({
  protocol_version: info.protocol_version, model_id: model.id, upload_chunks: Math.ceil(modelBytes.length / UPLOAD_CHUNK),
  layers: detail.layers.map((l) => ({ name: l.name, kind: l.kind, params: l.params.map((p) => [p.name, p.dtype]) })),
  captured, weights, run_status: finished.status, run_in_list: runs.runs.some((r) => r.id === finished.id),
  stored_results: run.results.length, results, error, layer_error: layerError,
}));
client.close();
