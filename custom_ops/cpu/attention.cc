// TurboQuantAttention CPU kernel. Phase A writes the present caches (copy past unless shared,
// encode the new rows) and, with a recent window, snapshots the rings' exact segment as float32;
// phase B attends, per (batch, kv head, chunk of <= 8 query vectors) so that every compressed row
// read serves all query heads of the GQA group; phase C writes the new tokens into the rings.
#include "cpu/attention.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "core/encode.h"
#include "core/half.h"
#include "cpu/parallel.h"
#include "cpu/rowkern.h"

namespace tq::cpu {
namespace {

constexpr int kMaxVec = 8;  // query vectors per task (the row kernels' register budget)

inline void load_vec(const void* base, int64_t off, int n, bool half, float* dst) {
  if (half) {
    const uint16_t* h = static_cast<const uint16_t*>(base) + off;
    for (int i = 0; i < n; ++i) dst[i] = half_to_float(h[i]);
  } else {
    std::memcpy(dst, static_cast<const float*>(base) + off, sizeof(float) * n);
  }
}

inline void store_vec(void* base, int64_t off, int n, bool half, const float* src) {
  if (half) {
    uint16_t* h = static_cast<uint16_t*>(base) + off;
    for (int i = 0; i < n; ++i) h[i] = float_to_half(src[i]);
  } else {
    std::memcpy(static_cast<float*>(base) + off, src, sizeof(float) * n);
  }
}

// Non-interleaved RoPE at position pos, every product and sum rounded (keys are encoded from it,
// so it must match the reference bit for bit).
void rope(float* x, int d, const void* cos, const void* sin, int64_t pos, bool half) {
  const int h = d / 2;
  for (int i = 0; i < h; ++i) {
    float c, s;
    load_vec(cos, pos * h + i, 1, half, &c);
    load_vec(sin, pos * h + i, 1, half, &s);
    const float x1 = x[i], x2 = x[i + h];
    x[i] = fsub(fmul(x1, c), fmul(x2, s));
    x[i + h] = fadd(fmul(x2, c), fmul(x1, s));
  }
}

// The code spans of compressed rows: one, or with split widths (docs/ops.md 1.4.1) the (bits+1)-bit
// coordinates [0, hi) and then the bits-bit [hi, d), each with its part of the codebook input and the
// coordinate it starts at (an offset into the query / accumulator).
struct CodeSpans {
  RowSpan span[2];
  int first[2];
  int n;
};

CodeSpans code_spans(const uint8_t* rows, int64_t stride, const RowLayout& l, const float* cb) {
  if (!l.hi) return CodeSpans{{RowSpan{rows, stride, l.codes_offset(), l.bits, l.d, cb}, {}}, {0, 0}, 1};
  return CodeSpans{{RowSpan{rows, stride, l.codes_offset(), l.bits + 1, l.hi, cb + (1 << l.bits)},
                    RowSpan{rows, stride, l.lo_codes_offset(), l.bits, l.d - l.hi, cb}},
                   {0, l.hi}, 2};
}

// y = H(s * x) / sqrt(d) (Hadamard rotations; dense ones go through dot_rows).
void rotate_fwd(const Rotation& r, const float* x, float* y) {
  const int d = r.d;
  const float isd = inv_sqrt_d(r);
  for (int i = 0; i < d; ++i) y[i] = r.data[i] * x[i];
  fwht(y, d);
  for (int i = 0; i < d; ++i) y[i] *= isd;
}

// x += R^T y
void rotate_inv_add(const Rotation& r, const float* y, float* x, float* tmp) {
  const int d = r.d;
  if (!r.dense) {
    const float isd = inv_sqrt_d(r);
    std::memcpy(tmp, y, sizeof(float) * d);
    fwht(tmp, d);
    for (int i = 0; i < d; ++i) x[i] += r.data[i] * tmp[i] * isd;
    return;
  }
  for (int i = 0; i < d; ++i) {
    const float* ri = r.data + size_t(i) * d;
    const float yi = y[i];
    for (int j = 0; j < d; ++j) x[j] += ri[j] * yi;
  }
}

struct Shared {  // per-call state shared by the tasks
  const AttentionArgs* a;
  int G, Rk, Rv;
  std::vector<int64_t> past_len, n_valid;
  std::vector<int64_t> ring0;     // [B] first cached position read from the rings (past_len when R = 0)
  std::vector<float> knew, vnew;  // [B, Hkv, S, d] float32 (keys after RoPE)
  std::vector<float> kring, vring;  // [B, Hkv, R, d] float32: positions ring0 .. past_len - 1 in order
  std::unique_ptr<Encoder> kenc, venc;
};

void write_present(Shared& sh, int b, int g) {
  const AttentionArgs& a = *sh.a;
  const int d = a.d, S = a.S;
  const int64_t bg = int64_t(b) * a.Hkv + g;
  uint8_t* pk = a.present_k + bg * a.Pp * sh.Rk;
  uint8_t* pv = static_cast<uint8_t*>(a.present_v) + bg * a.Pp * sh.Rv;
  if (a.past_k != a.present_k) {
    if (a.P) std::memcpy(pk, a.past_k + bg * a.P * sh.Rk, size_t(a.P) * sh.Rk);
    std::memset(pk + a.P * sh.Rk, 0, size_t(a.Pp - a.P) * sh.Rk);
  }
  if (a.past_v != a.present_v) {
    if (a.P) std::memcpy(pv, static_cast<const uint8_t*>(a.past_v) + bg * a.P * sh.Rv, size_t(a.P) * sh.Rv);
    std::memset(pv + a.P * sh.Rv, 0, size_t(a.Pp - a.P) * sh.Rv);
  }
  const int tsize = a.half ? 2 : 4;
  float* kf = sh.knew.data() + bg * S * d;  // this (b, g)'s new keys/values, float32, contiguous
  float* vf = sh.vnew.data() + bg * S * d;
  for (int i = 0; i < S; ++i) {
    const int64_t src = (int64_t(b) * S + i) * a.Hkv * d + int64_t(g) * d;
    load_vec(a.k, src, d, a.half, kf + int64_t(i) * d);
    if (a.do_rotary) rope(kf + int64_t(i) * d, d, a.cos, a.sin, sh.past_len[b] + i, a.half);
    load_vec(a.v, src, d, a.half, vf + int64_t(i) * d);
    if (a.keys_only)
      std::memcpy(pv + (sh.past_len[b] + i) * sh.Rv, static_cast<const uint8_t*>(a.v) + src * tsize,
                  size_t(d) * tsize);
  }
  // New rows go to positions past_len .. past_len + S - 1 (inputs were checked finite).
  sh.kenc->encode(kf, false, 0, S, pk + sh.past_len[b] * sh.Rk);
  if (!a.keys_only) sh.venc->encode(vf, false, 0, S, pv + sh.past_len[b] * sh.Rv);
  // The exact segment of the rings, read before phase C writes them (shared buffers included).
  for (int64_t j = sh.ring0[b]; j < sh.past_len[b]; ++j) {
    const int64_t src = (bg * a.R + j % a.R) * d, dst = (bg * a.R + j - sh.ring0[b]) * d;
    load_vec(a.past_kr, src, d, a.half, sh.kring.data() + dst);
    if (!a.keys_only) load_vec(a.past_vr, src, d, a.half, sh.vring.data() + dst);
  }
}

// Phase C: present rings = past rings (copied unless shared) with the new token at position p written
// to slot p % R when it is valid (p < L) and among the last R (p >= L - R).
void write_rings(const Shared& sh, int b, int g) {
  const AttentionArgs& a = *sh.a;
  const int d = a.d, tsize = a.half ? 2 : 4;
  const int64_t bg = int64_t(b) * a.Hkv + g, ring_bytes = a.R * d * tsize;
  const int64_t L = int64_t(a.seqlens[b]) + 1, pl = sh.past_len[b];
  auto first = [&](const void* past, void* present) {  // the ring before this step's slots
    uint8_t* dst = static_cast<uint8_t*>(present) + bg * ring_bytes;
    if (!past) std::memset(dst, 0, size_t(ring_bytes));
    else if (past != present) std::memcpy(dst, static_cast<const uint8_t*>(past) + bg * ring_bytes, size_t(ring_bytes));
  };
  if (a.present_kr) {
    first(a.past_kr, a.present_kr);
    for (int i = 0; i < a.S; ++i) {
      const int64_t p = pl + i;
      if (p < L && p >= L - a.R)
        store_vec(a.present_kr, (bg * a.R + p % a.R) * d, d, a.half, sh.knew.data() + (bg * a.S + i) * d);
    }
  }
  if (a.present_vr) {
    first(a.past_vr, a.present_vr);
    if (a.keys_only) return;  // values are exact in the rows: the value ring is passed through
    for (int i = 0; i < a.S; ++i) {
      const int64_t p = pl + i;
      if (p < L && p >= L - a.R)
        std::memcpy(static_cast<uint8_t*>(a.present_vr) + ((bg * a.R + p % a.R) * d) * tsize,
                    static_cast<const uint8_t*>(a.v) + ((int64_t(b) * a.S + i) * a.Hkv * d + int64_t(g) * d) * tsize,
                    size_t(d) * tsize);
    }
  }
}

struct Task {
  int b, g;
  int64_t v0, v1;  // query vectors [v0, v1) of (b, g), token-major: vector = i * G + head-in-group
};

void attend(const Shared& sh, const Task& t) {
  const AttentionArgs& a = *sh.a;
  const int d = a.d, G = sh.G, nv = int(t.v1 - t.v0);
  const int64_t bg = int64_t(t.b) * a.Hkv + t.g;
  const int64_t pl = sh.past_len[t.b];
  const float ninf = -std::numeric_limits<float>::infinity();

  std::vector<float> qf(size_t(nv) * d), qr(size_t(nv) * d), tmp(d);
  int64_t tok[kMaxVec], head[kMaxVec], pos[kMaxVec], lo[kMaxVec];
  int64_t c0 = pl, nnew = 0;
  for (int v = 0; v < nv; ++v) {
    const int64_t vi = t.v0 + v;
    tok[v] = vi / G;
    head[v] = int64_t(t.g) * G + vi % G;
    pos[v] = pl + tok[v];
    lo[v] = a.window > 0 ? std::max<int64_t>(0, pos[v] - a.window + 1) : 0;
    c0 = std::min(c0, lo[v]);
    nnew = std::max(nnew, tok[v] + 1);
    float* q = qf.data() + size_t(v) * d;
    load_vec(a.q, (int64_t(t.b) * a.S + tok[v]) * a.Hq * d + head[v] * d, d, a.half, q);
    if (a.do_rotary) rope(q, d, a.cos, a.sin, pos[v], a.half);
    if (!a.kc.rot.dense) rotate_fwd(a.kc.rot, q, qr.data() + size_t(v) * d);
  }
  if (a.kc.rot.dense)  // R q for all vectors at once: the rows of R are plain float32 vectors
    dot_rows(RowSpan{reinterpret_cast<const uint8_t*>(a.kc.rot.data), int64_t(d) * 4, 0, 32, d, nullptr}, d, qf.data(),
             d, nv, qr.data(), d, kNoRowScale, 1.0f, false);
  // Score columns: cached positions c0 .. pl - 1 (compressed rows c0 .. rs - 1, then the exact ring
  // segment rs .. pl - 1), then the new tokens.
  const int64_t ncache = pl - c0, ld = ncache + nnew;
  const int64_t rs = std::max(c0, sh.ring0[t.b]), ncomp = rs - c0, nring = pl - rs;
  std::vector<float> sc(size_t(nv) * ld);

  // Cached keys: softmax scale * (scale_j * <R q, c[code_j]> + QJL term), from the compressed rows.
  if (ncomp > 0) {
    const int Rk = sh.Rk;
    const RowLayout& kl = a.kc.lay;
    const uint8_t* rows = a.present_k + (bg * a.Pp + c0) * Rk;
    const CodeSpans ks = code_spans(rows, Rk, kl, a.kc.codebook);
    for (int k = 0; k < ks.n; ++k)
      dot_rows(ks.span[k], ncomp, qr.data() + ks.first[k], d, nv, sc.data(), ld, 0, a.scale, k > 0);
    if (kl.qjl) {  // + rnorm_j * sqrt(pi/2)/m * <S R q, sgn_j>: the sign bits are a 1-bit code over {-1, +1}
      const int m = kl.m;
      std::vector<float> sq(size_t(nv) * m);  // S R q: the rows of S are plain float32 vectors
      dot_rows(RowSpan{reinterpret_cast<const uint8_t*>(a.kc.qjl), int64_t(d) * 4, 0, 32, d, nullptr}, m, qr.data(),
               d, nv, sq.data(), m, kNoRowScale, 1.0f, false);
      static const float pm1[2] = {-1.0f, 1.0f};
      dot_rows(RowSpan{rows, Rk, kl.signs_offset(), 1, m, pm1}, ncomp, sq.data(), m, nv, sc.data(), ld,
               kl.rnorm_offset(), a.scale * float(1.2533141373155001 / m), true);  // sqrt(pi/2) / m
    }
  }
  // Recent cached keys, exactly (float32 snapshot of the key ring, positions rs .. pl - 1).
  const float* kring = sh.kring.data() + (bg * a.R + rs - sh.ring0[t.b]) * d;
  if (nring > 0)
    dot_rows(RowSpan{reinterpret_cast<const uint8_t*>(kring), int64_t(d) * 4, 0, 32, d, nullptr}, nring, qf.data(), d,
             nv, sc.data() + ncomp, ld, kNoRowScale, a.scale, false);
  // New keys, exactly (float32 K after RoPE), then the causal / window mask.
  const float* knew = sh.knew.data() + bg * a.S * d;
  dot_rows(RowSpan{reinterpret_cast<const uint8_t*>(knew), int64_t(d) * 4, 0, 32, d, nullptr}, nnew, qf.data(), d, nv,
           sc.data() + ncache, ld, kNoRowScale, a.scale, false);
  for (int v = 0; v < nv; ++v)
    for (int64_t jj = 0; jj < nnew; ++jj)
      if (jj > tok[v] || pl + jj < lo[v]) sc[v * ld + ncache + jj] = ninf;
  // Softcap, window mask, softmax (unnormalised; divided at the end).
  float denom[kMaxVec];
  for (int v = 0; v < nv; ++v) {
    float* s = sc.data() + v * ld;
    if (a.softcap > 0.0f)
      for (int64_t r = 0; r < ld; ++r)
        if (s[r] != ninf) s[r] = a.softcap * std::tanh(s[r] / a.softcap);
    for (int64_t r = 0; r < lo[v] - c0; ++r) s[r] = ninf;
    denom[v] = exp_shift_sum(s, ld);
  }
  // Values: cached rows accumulate in the rotated domain (rotated back once), new ones exactly.
  std::vector<float> acc_rot(size_t(nv) * d, 0.0f), acc(size_t(nv) * d, 0.0f);
  // (keys-only: every cached value is exact in the rows, ring segment included).
  const uint8_t* vrows = static_cast<const uint8_t*>(a.present_v) + (bg * a.Pp + c0) * sh.Rv;
  if (a.keys_only) {
    if (ncache > 0)
      acc_rows(RowSpan{vrows, sh.Rv, 0, a.half ? 16 : 32, d, nullptr}, ncache, sc.data(), ld, nv, acc.data(), d,
               kNoRowScale);
  } else {
    if (ncomp > 0) {
      const CodeSpans vs = code_spans(vrows, sh.Rv, a.vc.lay, a.vc.codebook);
      for (int k = 0; k < vs.n; ++k)
        acc_rows(vs.span[k], ncomp, sc.data(), ld, nv, acc_rot.data() + vs.first[k], d, 0);
    }
    const float* vring = sh.vring.data() + (bg * a.R + rs - sh.ring0[t.b]) * d;
    if (nring > 0)
      acc_rows(RowSpan{reinterpret_cast<const uint8_t*>(vring), int64_t(d) * 4, 0, 32, d, nullptr}, nring,
               sc.data() + ncomp, ld, nv, acc.data(), d, kNoRowScale);
  }
  const float* vnew = sh.vnew.data() + bg * a.S * d;
  acc_rows(RowSpan{reinterpret_cast<const uint8_t*>(vnew), int64_t(d) * 4, 0, 32, d, nullptr}, nnew, sc.data() + ncache,
           ld, nv, acc.data(), d, kNoRowScale);
  for (int v = 0; v < nv; ++v) {
    float* o = acc.data() + size_t(v) * d;
    if (ncomp > 0 && !a.keys_only) rotate_inv_add(a.vc.rot, acc_rot.data() + size_t(v) * d, o, tmp.data());
    const float inv = 1.0f / denom[v];
    for (int i = 0; i < d; ++i) o[i] *= inv;
    store_vec(a.out, (int64_t(t.b) * a.S + tok[v]) * a.Hq * d + head[v] * d, d, a.half, o);
  }
}

}  // namespace

void attention(const AttentionArgs& a) {
  Shared sh;
  sh.a = &a;
  sh.G = a.Hq / a.Hkv;
  sh.Rk = a.kc.lay.row_bytes();
  sh.Rv = a.keys_only ? a.d * (a.half ? 2 : 4) : a.vc.lay.row_bytes();
  sh.past_len.resize(a.B);
  sh.n_valid.resize(a.B);
  sh.ring0.resize(a.B);
  for (int b = 0; b < a.B; ++b) {
    positions(a.seqlens[b], a.S, &sh.past_len[b], &sh.n_valid[b]);
    sh.ring0[b] = a.R > 0 ? std::max<int64_t>(0, sh.past_len[b] - a.R) : sh.past_len[b];
  }
  const size_t nnew = size_t(a.B) * a.Hkv * a.S * a.d;
  sh.knew.resize(nnew);
  sh.vnew.resize(nnew);
  if (a.R > 0) {
    sh.kring.resize(size_t(a.B) * a.Hkv * a.R * a.d);
    if (!a.keys_only) sh.vring.resize(sh.kring.size());
  }
  sh.kenc = std::make_unique<Encoder>(a.kc);
  if (!a.keys_only) sh.venc = std::make_unique<Encoder>(a.vc);

  parallel_for(int64_t(a.B) * a.Hkv, [&](int64_t t) { write_present(sh, int(t / a.Hkv), int(t % a.Hkv)); });

  std::vector<Task> tasks;
  for (int b = 0; b < a.B; ++b)
    for (int g = 0; g < a.Hkv; ++g)
      for (int64_t v0 = 0; v0 < sh.n_valid[b] * sh.G; v0 += kMaxVec)
        tasks.push_back(Task{b, g, v0, std::min<int64_t>(v0 + kMaxVec, sh.n_valid[b] * sh.G)});
  parallel_for(int64_t(tasks.size()), [&](int64_t i) { attend(sh, tasks[i]); });
  if (a.R > 0 && (a.present_kr || a.present_vr))
    parallel_for(int64_t(a.B) * a.Hkv, [&](int64_t t) { write_rings(sh, int(t / a.Hkv), int(t % a.Hkv)); });

  // Queries past the valid length of a right-padded prompt output zeros.
  const int tsize = a.half ? 2 : 4;
  for (int b = 0; b < a.B; ++b)
    for (int64_t i = sh.n_valid[b]; i < a.S; ++i)
      std::memset(static_cast<uint8_t*>(a.out) + (int64_t(b) * a.S + i) * a.Hq * a.d * tsize, 0,
                  size_t(a.Hq) * a.d * tsize);
}

}  // namespace tq::cpu
