// TurboQuantAttention CPU kernel. Phase A writes the present caches (copy past unless shared,
// encode the new rows); phase B attends, per (batch, kv head, chunk of <= 8 query vectors) so that
// every compressed row read serves all query heads of the GQA group.
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
  std::vector<float> knew, vnew;  // [B, Hkv, S, d] float32 (keys after RoPE)
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
  const int64_t ncache = pl - c0, ld = ncache + nnew;
  std::vector<float> sc(size_t(nv) * ld);

  // Cached keys: softmax scale * (scale_j * <R q, c[code_j]> + QJL term), from the compressed rows.
  if (ncache > 0) {
    const int Rk = sh.Rk;
    const RowLayout& kl = a.kc.lay;
    const uint8_t* rows = a.present_k + (bg * a.Pp + c0) * Rk;
    dot_rows(RowSpan{rows, Rk, kl.codes_offset(), kl.bits, d, a.kc.codebook}, ncache, qr.data(), d, nv, sc.data(), ld,
             0, a.scale, false);
    if (kl.qjl) {  // + rnorm_j * sqrt(pi/2)/m * <S R q, sgn_j>: the sign bits are a 1-bit code over {-1, +1}
      const int m = kl.m;
      std::vector<float> sq(size_t(nv) * m);  // S R q: the rows of S are plain float32 vectors
      dot_rows(RowSpan{reinterpret_cast<const uint8_t*>(a.kc.qjl), int64_t(d) * 4, 0, 32, d, nullptr}, m, qr.data(),
               d, nv, sq.data(), m, kNoRowScale, 1.0f, false);
      static const float pm1[2] = {-1.0f, 1.0f};
      dot_rows(RowSpan{rows, Rk, kl.signs_offset(), 1, m, pm1}, ncache, sq.data(), m, nv, sc.data(), ld,
               kl.rnorm_offset(), a.scale * float(1.2533141373155001 / m), true);  // sqrt(pi/2) / m
    }
  }
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
  if (ncache > 0) {
    const uint8_t* vrows = static_cast<const uint8_t*>(a.present_v) + (bg * a.Pp + c0) * sh.Rv;
    if (a.keys_only) {
      acc_rows(RowSpan{vrows, sh.Rv, 0, a.half ? 16 : 32, d, nullptr}, ncache, sc.data(), ld, nv, acc.data(), d,
               kNoRowScale);
    } else {
      acc_rows(RowSpan{vrows, sh.Rv, a.vc.lay.codes_offset(), a.vc.lay.bits, d, a.vc.codebook}, ncache, sc.data(),
               ld, nv, acc_rot.data(), d, 0);
    }
  }
  const float* vnew = sh.vnew.data() + bg * a.S * d;
  acc_rows(RowSpan{reinterpret_cast<const uint8_t*>(vnew), int64_t(d) * 4, 0, 32, d, nullptr}, nnew, sc.data() + ncache,
           ld, nv, acc.data(), d, kNoRowScale);
  for (int v = 0; v < nv; ++v) {
    float* o = acc.data() + size_t(v) * d;
    if (ncache > 0 && !a.keys_only) rotate_inv_add(a.vc.rot, acc_rot.data() + size_t(v) * d, o, tmp.data());
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
  for (int b = 0; b < a.B; ++b) positions(a.seqlens[b], a.S, &sh.past_len[b], &sh.n_valid[b]);
  const size_t nnew = size_t(a.B) * a.Hkv * a.S * a.d;
  sh.knew.resize(nnew);
  sh.vnew.resize(nnew);
  sh.kenc = std::make_unique<Encoder>(a.kc);
  if (!a.keys_only) sh.venc = std::make_unique<Encoder>(a.vc);

  parallel_for(int64_t(a.B) * a.Hkv, [&](int64_t t) { write_present(sh, int(t / a.Hkv), int(t % a.Hkv)); });

  std::vector<Task> tasks;
  for (int b = 0; b < a.B; ++b)
    for (int g = 0; g < a.Hkv; ++g)
      for (int64_t v0 = 0; v0 < sh.n_valid[b] * sh.G; v0 += kMaxVec)
        tasks.push_back(Task{b, g, v0, std::min<int64_t>(v0 + kMaxVec, sh.n_valid[b] * sh.G)});
  parallel_for(int64_t(tasks.size()), [&](int64_t i) { attend(sh, tasks[i]); });

  // Queries past the valid length of a right-padded prompt output zeros.
  const int tsize = a.half ? 2 : 4;
  for (int b = 0; b < a.B; ++b)
    for (int64_t i = sh.n_valid[b]; i < a.S; ++i)
      std::memset(static_cast<uint8_t*>(a.out) + (int64_t(b) * a.S + i) * a.Hq * a.d * tsize, 0,
                  size_t(a.Hq) * a.d * tsize);
}

}  // namespace tq::cpu
