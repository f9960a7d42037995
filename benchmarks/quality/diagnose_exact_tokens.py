"""Diagnostic: what would close the gap? Tokens kept uncompressed (attention sinks, a recent window)
or code widths the op does not have (5, 6 bits).

    python benchmarks/quality/diagnose_exact_tokens.py --bits 4,4 --sinks 0,1,4 --recent 0,32 --with-op
    python benchmarks/quality/diagnose_exact_tokens.py --bits "5,3;6,3;6,2" --any-bits

NOT the headline method. The headline numbers (sweep.py, `tq-ort eval`) run the rewritten graph
and the TurboQuantAttention op. The op has no option to keep tokens uncompressed, so this script
asks "what if" with a hybrid: the *original* float model runs in ONNX Runtime (concat-mode cache),
and between steps the rows of its cache are replaced by their TurboQuant round trip
x_hat = decode(encode(x)) from the numpy reference codec (tq_ort.codec, same rotation seeds and
codebooks as the graph pass), except for the first `sinks` tokens of the window and the last
`recent` tokens, which stay exact. Mathematically that is what the op computes (it scores
compressed keys in the rotated domain: <Rq, scale c> = <q, x_hat>); the row with sinks=0,
recent=0 checks the hybrid against the op at the same chunk. Perplexity and KL as in
tq_ort/quality/ (same windows, same original-model reference).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tq_ort import codec, quality  # noqa: E402
from tq_ort.quality.metrics import kl_divergence, log_softmax  # noqa: E402
from tq_ort.quality.report import slug  # noqa: E402
from tq_ort.quality.runners import decoder_session  # noqa: E402


class HybridCache:
    """Per layer: exact K/V and their TurboQuant round trip; feeds the model exact rows for the first
    `sinks` and the last `recent` positions and round-tripped rows elsewhere."""

    def __init__(self, sess, kb: int, vb: int, seed: int, sinks: int, recent: int):
        self.sess, self.sinks, self.recent = sess, sinks, recent
        self.exact, self.quant = {}, {}
        self.tools = {}
        for s in sess.specs:
            d = s.width
            kind_bits = kb if s.past.endswith(".key") else vb
            self.tools[s.past] = (codec.rotation(d, seed + s.layer), codec.codebook(d, kind_bits))

    def reset(self):
        self.exact = {s.past: None for s in self.sess.specs}
        self.quant = {s.past: None for s in self.sess.specs}

    def update(self):
        """After a step: take the session's present (exact for the new rows), round-trip the new rows."""
        import onnxruntime as ort

        L = self.sess.length
        for s in self.sess.specs:
            full = self.sess._cache[s.past].numpy()  # [B, H, L, d] = fed past ++ exact new rows
            old = 0 if self.exact[s.past] is None else self.exact[s.past].shape[2]
            new = full[:, :, old:L]
            rot, cb = self.tools[s.past]
            rt = codec.decode(codec.encode(new, rot, cb), rot, cb)
            ex = new if self.exact[s.past] is None else np.concatenate([self.exact[s.past], new], axis=2)
            qu = rt if self.quant[s.past] is None else np.concatenate([self.quant[s.past], rt], axis=2)
            self.exact[s.past], self.quant[s.past] = ex, qu
            fed = qu.copy()
            fed[:, :, : self.sinks] = ex[:, :, : self.sinks]
            if self.recent:
                fed[:, :, max(0, L - self.recent):] = ex[:, :, max(0, L - self.recent):]
            self.sess._cache[s.past] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(fed))


def run(ref: quality.Reference, src: Path, kb: int, vb: int, sinks: int, recent: int, chunk: int, seed: int = 0):
    data = ref.data
    W, L = data.windows.shape
    o = data.offset
    n = L - 1 - o
    sess = decoder_session(src, L)
    hc = HybridCache(sess, kb, vb, seed, sinks + o, recent)  # the BOS (if any) counts as a sink too
    nll, kl = np.zeros((W, n)), np.zeros((W, n))
    for b0 in range(0, W, 8):
        rows = list(range(b0, min(W, b0 + 8)))
        sess.reset(len(rows))
        hc.reset()
        ids = data.windows[rows]
        for s0 in range(0, L, chunk):
            lg = sess.step(ids[:, s0:s0 + chunk], all_logits=True)
            hc.update()
            lo, hi = max(s0, o), min(s0 + lg.shape[1], L - 1)
            if hi > lo:
                lp = log_softmax(lg[:, lo - s0:hi - s0])
                nll[rows, lo - o:hi - o] = -np.take_along_axis(lp, ids[:, lo + 1:hi + 1, None], axis=-1)[..., 0]
                kl[rows, lo - o:hi - o] = kl_divergence(np.asarray(ref.logp[rows, lo - o:hi - o]), lp)
    return 100 * (math.exp(nll.mean() - ref.nll.mean()) - 1), float(kl.mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2")
    p.add_argument("--bits", default="4,4", help="key,value bits; several as 'k,v;k,v' (default 4,4)")
    p.add_argument("--any-bits", action="store_true", help="allow code widths the op lacks (5, 6, 7): "
                   "Lloyd-Max codebooks computed the same way (hypothetical configurations)")
    p.add_argument("--sinks", default="0,1,4", help="first tokens kept exact (comma list)")
    p.add_argument("--recent", default="0", help="last tokens kept exact (comma list)")
    p.add_argument("--texts", default="ptb:1024,alice:1024")
    p.add_argument("--context", type=int, default=512)
    p.add_argument("--chunk", type=int, default=8)
    p.add_argument("--with-op", action="store_true", help="also run the real op at the same chunk (sinks=0)")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks/quality/results"))
    a = p.parse_args(argv)
    pairs = [tuple(int(x) for x in kv.split(",")) for kv in a.bits.split(";")]
    if a.any_bits:
        sys.modules["tq_ort.codec.codebook"].SUPPORTED_BITS = tuple(range(1, 9))  # the package shadows the name
    model_dir = quality.resolve_model_dir(a.model)
    from tq_ort.export import exported_model

    src = exported_model(model_dir, "optimum")
    st = quality.EvalSettings(texts=tuple(a.texts.split(",")), context=a.context, chunk=a.chunk, gen_prompts=0)
    data = quality.build_data(quality.load_tokenizer(model_dir), st)
    ref = quality.Reference(src, data, st, progress=False)
    out = {"model": model_dir.name, "bits": pairs, "texts": a.texts, "context": a.context, "chunk": a.chunk,
           "command": " ".join(sys.argv), "method": "hybrid: float ORT model + numpy TurboQuant round trip of "
           "the cache rows (diagnostic)", "rows": []}
    out["op"] = []
    for kb, vb in pairs:
        if a.with_op and kb in (1, 2, 3, 4, 8) and vb in (1, 2, 3, 4, 8):
            rec = quality.run_eval(model_dir, [quality.Variant.turboquant(key_bits=kb, value_bits=vb)], st,
                                   progress=False, log=lambda *x: None)
            r = rec["results"][0]
            out["op"].append({"bits": [kb, vb], "ppl_delta_pct": r["ppl_delta_pct"]["all"], "kl": r["kl"]["all"]})
            print(f"op     K{kb}V{vb}: ppl {r['ppl_delta_pct']['all']:+.2f}%  KL {r['kl']['all']:.4f}", flush=True)
        for sinks in (int(x) for x in a.sinks.split(",")):
            for recent in (int(x) for x in a.recent.split(",")):
                t = time.time()
                d, k = run(ref, src, kb, vb, sinks, recent, a.chunk)
                out["rows"].append({"bits": [kb, vb], "sinks": sinks, "recent": recent, "ppl_delta_pct": d, "kl": k})
                print(f"hybrid K{kb}V{vb} sinks {sinks:>3} recent {recent:>3}: ppl {d:+.2f}%  KL {k:.4f}  "
                      f"({time.time() - t:.0f} s)", flush=True)
    res = Path(a.results_dir)
    res.mkdir(parents=True, exist_ok=True)
    tag = "_".join(f"K{kb}V{vb}" for kb, vb in pairs)
    stem = f"diagnose-{slug(model_dir.name)}-{tag}-chunk{a.chunk}"
    (res / f"{stem}.json").write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
