// TurboQuantAttention on the CPU (docs/ops.md section 4). Plain pointers; the caller validates
// shapes, dtypes, finiteness and positions. Cached rows are read from present_* (equal to past_* in
// the shared-buffer case; copied from it, zero beyond P, otherwise).
#pragma once
#include <cstdint>

#include "cpu/codec.h"

namespace tq::cpu {

struct AttentionArgs {
  int B = 0, S = 0, Hq = 0, Hkv = 0, d = 0;
  int64_t P = 0, Pp = 0;       // rows in past_* and present_*
  float scale = 0.0f;          // resolved (never 0)
  float softcap = 0.0f;        // 0 = none
  int64_t window = -1;         // <= 0: none; else keys in (p - window, p]
  bool half = false;           // T = float16 (else float32)
  const void* q = nullptr;     // T [B, S, Hq*d]
  const void* k = nullptr;     // T [B, S, Hkv*d]
  const void* v = nullptr;
  const uint8_t* past_k = nullptr;  // [B, Hkv, P, Rk]
  uint8_t* present_k = nullptr;     // [B, Hkv, Pp, Rk]; == past_k: shared buffer
  const void* past_v = nullptr;     // rows [.., Rv], or T [.., d] when keys_only
  void* present_v = nullptr;
  const int32_t* seqlens = nullptr;  // [B], validated: past_len + S <= Pp, past_len <= P
  Codec kc, vc;                      // vc unused when keys_only
  bool keys_only = false;
  bool do_rotary = false;
  const void* cos = nullptr;  // T [>= max position + 1, d/2]
  const void* sin = nullptr;
  void* out = nullptr;        // T [B, S, Hq*d]
  // Recent window (docs/ops.md 4): R > 0 reads cached positions [max(0, past_len - R), past_len)
  // exactly from the rings (T [B, Hkv, R, d], position j in slot j % R) instead of from the rows.
  // The rings are read before anything is written to them; after attention the last R valid new
  // tokens are written (present == past: shared buffer, only those slots change; else copied first).
  int64_t R = 0;                   // 0 = off: every ring pointer is ignored
  const void* past_kr = nullptr;   // T [B, Hkv, R, d], required when R > 0
  void* present_kr = nullptr;      // T [B, Hkv, R, d]; nullptr: not produced
  const void* past_vr = nullptr;   // required when R > 0 unless keys_only; keys_only: copied through
                                   // to present_vr if non-null (never read), else present_vr is zeroed
  void* present_vr = nullptr;      // nullptr: not produced
};

// past_len and valid query count of batch row b (docs/ops.md 4, "Positions").
inline void positions(int32_t seqlen_k, int S, int64_t* past_len, int64_t* n_valid) {
  const int64_t L = int64_t(seqlen_k) + 1;
  *past_len = L >= S ? L - S : 0;
  *n_valid = L >= S ? S : L;
}

void attention(const AttentionArgs& a);

}  // namespace tq::cpu
