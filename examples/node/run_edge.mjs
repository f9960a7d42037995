// Run a `tq-ort export/rewrite --target edge` model with onnxruntime-web (wasm backend) under Node:
// a prompt, then greedy decode steps, the compressed KV cache (uint8 rows, docs/ops.md 1.4) kept
// between steps: each step's present.* becomes the next step's past_key_values.* (concat mode).
//
//   npm ci                              # in examples/node (installs onnxruntime-web 1.30.0)
//   node run_edge.mjs MODEL.onnx --prompt 256,72,101,108 --steps 8 [--json]
//
// Prints the generated token ids (and, with --json, one JSON object with every step's logits of
// the last position, which tests/test_edge_node.py compares with Python onnxruntime).
import { readFileSync } from 'node:fs';
import * as ort from 'onnxruntime-web';

function parseArgs(argv) {
  const args = { model: null, prompt: [256], steps: 8, json: false };
  for (let i = 0; i < argv.length; ++i) {
    const a = argv[i];
    if (a === '--prompt') args.prompt = argv[++i].split(',').map(Number);
    else if (a === '--steps') args.steps = Number(argv[++i]);
    else if (a === '--json') args.json = true;
    else if (!args.model) args.model = a;
    else throw new Error(`unexpected argument ${a}`);
  }
  if (!args.model) throw new Error('usage: node run_edge.mjs MODEL.onnx [--prompt ids] [--steps N] [--json]');
  if (!args.prompt.length || args.prompt.some((t) => !Number.isInteger(t) || t < 0)) {
    throw new Error(`--prompt ${args.prompt}: expected comma-separated non-negative token ids`);
  }
  return args;
}

const int64 = (arr, dims) => new ort.Tensor('int64', BigInt64Array.from(arr.map(BigInt)), dims);

// An empty cache tensor [1, kv_heads, 0, row_bytes] (uint8 rows) or [1, kv_heads, 0, head_dim] (float).
function emptyCache(meta) {
  const dims = meta.shape.map((d, i) => (i === 0 ? 1 : i === 2 ? 0 : d));
  if (dims.some((d) => typeof d !== 'number')) throw new Error(`${meta.name} shape ${meta.shape}: expected static heads/width`);
  const ctor = { uint8: Uint8Array, float32: Float32Array, float16: Uint16Array }[meta.type];
  if (!ctor) throw new Error(`${meta.name} type ${meta.type}: expected uint8, float32 or float16`);
  return new ort.Tensor(meta.type, new ctor(0), dims);
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  ort.env.wasm.numThreads = 1;
  const session = await ort.InferenceSession.create(readFileSync(args.model), { executionProviders: ['wasm'] });
  const inputs = new Map(session.inputMetadata.map((m) => [m.name, m]));
  const pastNames = [...inputs.keys()].filter((n) => n.startsWith('past_key_values.'));
  let cache = Object.fromEntries(pastNames.map((n) => [n, emptyCache(inputs.get(n))]));
  let length = 0;
  let ids = args.prompt;
  const tokens = [];
  const logitsPerStep = [];
  for (let step = 0; step <= args.steps; ++step) {
    const S = ids.length;
    const feeds = { input_ids: int64(ids, [1, S]), ...cache };
    if (inputs.has('attention_mask')) feeds.attention_mask = int64(Array(length + S).fill(1), [1, length + S]);
    if (inputs.has('position_ids')) feeds.position_ids = int64(ids.map((_, i) => length + i), [1, S]);
    const out = await session.run(feeds);
    const logits = out.logits;
    const vocab = logits.dims[2];
    const last = Array.from(logits.data.subarray((S - 1) * vocab, S * vocab));
    logitsPerStep.push(last);
    // the cache between steps stays the compressed rows: present.{i}.* -> past_key_values.{i}.*
    cache = Object.fromEntries(pastNames.map((n) => [n, out[n.replace('past_key_values.', 'present.')]]));
    length += S;
    let best = 0;
    for (let v = 1; v < vocab; ++v) if (last[v] > last[best]) best = v;
    if (step < args.steps) tokens.push(best);
    ids = [best];
  }
  if (args.json) {
    const cacheBytes = Object.values(cache).reduce((s, t) => s + t.data.byteLength, 0);
    console.log(JSON.stringify({ tokens, logits: logitsPerStep, cache_bytes: cacheBytes, length }));
  } else {
    console.log(`generated ${tokens.join(',')} (cache: ${length} tokens)`);
  }
}

main().catch((e) => { console.error(e.message || e); process.exit(1); });
