// Native CPU kernel for hfq::quantize_ggml: ggml's block quantizers, byte-exact, one row per task.
//
// The spec is the pure-torch body in hfq/algorithms/ggml_quant.py (and ggml itself, which tests compare
// against). Everything is float32 in source order; build with -ffp-contract=off and without -ffast-math so the
// compiler neither fuses a*b+c nor reorders the sequential sums the searches depend on.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/Half.h>
#include <torch/library.h>

#include <cfloat>
#include <cmath>
#include <cstring>
#include <string>

namespace {

using u8 = uint8_t;
constexpr float kEps = 1e-15f;

inline int nint(float f) {  // add 1.5*2^23 and read the mantissa: round half to even
  float v = f + 12582912.f;
  int i;
  std::memcpy(&i, &v, 4);
  return (i & 0x007fffff) - 0x00400000;
}
inline uint16_t to_h(float f) { return c10::Half(f).x; }
inline float from_h(uint16_t h) { return static_cast<float>(c10::Half(h, c10::Half::from_bits())); }
inline void put_h(u8* p, float f) { uint16_t h = to_h(f); std::memcpy(p, &h, 2); }
inline float get_h(const u8* p) { uint16_t h; std::memcpy(&h, p, 2); return from_h(h); }
template <class T> inline T clampv(T v, T lo, T hi) { return v < lo ? lo : (v > hi ? hi : v); }

// Signed value with the largest |x|, first on ties.
inline float first_absmax(int n, const float* x, float* amax_out) {
  float amax = 0, mx = 0;
  for (int i = 0; i < n; ++i) {
    float a = std::fabs(x[i]);
    if (a > amax) { amax = a; mx = x[i]; }
  }
  if (amax_out) *amax_out = amax;
  return mx;
}

// Symmetric levels [-nmax, nmax-1] with weighted RMSE search; L gets level + nmax. Templated so each
// (n, nmax) gets its own unrolled copy, as ggml's static calls with constant arguments do.
template <int n, int nmax>
float search_qx(const float* x, int8_t* L, const float* qw) {
  float amax;
  float mx = first_absmax(n, x, &amax);
  if (amax < kEps) { std::memset(L, 0, n); return 0.f; }
  float wx[32], wt[32];   // the weights and w*x do not change between trials; ggml recomputes the same values
  for (int i = 0; i < n; ++i) { wt[i] = qw ? qw[i] : x[i] * x[i]; wx[i] = wt[i] * x[i]; }
  auto trial = [&](float iscale, float& sumlx, float& suml2) {
    sumlx = 0; suml2 = 0;
    for (int i = 0; i < n; ++i) {
      int l = clampv(nint(iscale * x[i]), -nmax, nmax - 1);
      sumlx += wx[i] * l;
      suml2 += wt[i] * l * l;
    }
  };
  auto fill = [&](float iscale) {
    for (int i = 0; i < n; ++i) L[i] = (int8_t)(nmax + clampv(nint(iscale * x[i]), -nmax, nmax - 1));
  };
  float iscale = -nmax / mx, sumlx, suml2;
  trial(iscale, sumlx, suml2);
  fill(iscale);
  float scale = suml2 != 0.f ? sumlx / suml2 : 0.f;
  float best = scale * sumlx;
  for (int is = -9; is <= 9; ++is) {
    if (is == 0) continue;
    float isc = -(nmax + 0.1f * is) / mx, slx, sl2;
    trial(isc, slx, sl2);
    if (sl2 > 0 && slx * slx > best * sl2) {
      fill(isc);
      scale = slx / sl2;
      best = scale * slx;
    }
  }
  return scale;
}

// Q3_K's search: symmetric start, then coordinate descent. L gets level + nmax.
float search_q3(int n, int nmax, const float* x, int8_t* L) {
  float amax;
  float mx = first_absmax(n, x, &amax);
  if (amax < kEps) { std::memset(L, 0, n); return 0.f; }
  float iscale = -nmax / mx, sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = clampv(nint(iscale * x[i]), -nmax, nmax - 1);
    L[i] = (int8_t)l;
    float w = x[i] * x[i];
    sumlx += w * x[i] * l;
    suml2 += w * l * l;
  }
  for (int pass = 0; pass < 5; ++pass) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      float w = x[i] * x[i];
      float slx = sumlx - w * x[i] * L[i];
      if (slx > 0) {
        float sl2 = suml2 - w * L[i] * L[i];
        int nl = clampv(nint(x[i] * sl2 / slx), -nmax, nmax - 1);
        if (nl != L[i]) {
          slx += w * x[i] * nl;
          sl2 += w * nl * nl;
          if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
            L[i] = (int8_t)nl; sumlx = slx; suml2 = sl2; ++changed;
          }
        }
      }
    }
    if (!changed) break;
  }
  for (int i = 0; i < n; ++i) L[i] = (int8_t)(L[i] + nmax);
  return suml2 > 0.f ? sumlx / suml2 : 0.f;
}

// Scale and min search (make_qkx2_quants; qkx3 variant when qkx3). Returns scale; *the_min >= 0.
template <int n, int nmax>
float search_qkx(const float* x, const float* w, u8* L, float* the_min, float rmin,
                 float rdelta, int nstep, bool use_mad, bool qkx3) {
  u8 Laux[32];
  float mn = x[0], mx = x[0], sum_w = w[0], sum_x = sum_w * x[0];
  for (int i = 1; i < n; ++i) {
    if (x[i] < mn) mn = x[i];
    if (x[i] > mx) mx = x[i];
    sum_w += w[i];
    sum_x += w[i] * x[i];
  }
  if (mn > 0) mn = 0;
  if (qkx3 ? (mx <= mn) : (mx == mn)) { std::memset(L, 0, n); *the_min = -mn; return 0.f; }
  auto err = [&](float s, float m, const u8* q) {
    float e = 0;
    for (int i = 0; i < n; ++i) {
      float d = s * q[i] + m - x[i];
      d = use_mad ? std::fabs(d) : d * d;
      e += w[i] * d;
    }
    return e;
  };
  float iscale = nmax / (mx - mn), scale = 1 / iscale;
  for (int i = 0; i < n; ++i) L[i] = (u8)clampv(nint(iscale * (x[i] - mn)), 0, nmax);
  float best = err(scale, mn, L);
  for (int is = 0; is <= nstep; ++is) {
    float isc = (rmin + rdelta * is + nmax) / (mx - mn);
    float sl = 0, sl2 = 0, sxl = 0;
    for (int i = 0; i < n; ++i) {
      int l = clampv(nint(isc * (x[i] - mn)), 0, nmax);
      Laux[i] = (u8)l;
      sl += w[i] * l;
      sl2 += w[i] * l * l;
      sxl += w[i] * l * x[i];
    }
    float D = sum_w * sl2 - sl * sl;
    if (D > 0) {
      float ts = (sum_w * sxl - sum_x * sl) / D;
      float tm = (sl2 * sum_x - sl * sxl) / D;
      if (tm > 0) { tm = 0; ts = sxl / sl2; }
      float cur = err(ts, tm, Laux);
      if (cur < best) { std::memcpy(L, Laux, n); best = cur; scale = ts; mn = tm; }
    }
  }
  *the_min = -mn;
  return scale;
}

// Non-negative values (sub-block scales or mins) to 0..nmax with weights qw.
float search_qp(int n, int nmax, const float* x, u8* L, const float* qw) {
  float mx = 0;
  for (int i = 0; i < n; ++i) mx = mx > x[i] ? mx : x[i];
  if (mx < kEps) { std::memset(L, 0, n); return 0.f; }
  float iscale = nmax / mx;
  for (int i = 0; i < n; ++i) L[i] = (u8)nint(iscale * x[i]);
  float scale = 1 / iscale, best = 0;
  for (int i = 0; i < n; ++i) { float d = x[i] - scale * L[i]; best += qw[i] * d * d; }
  for (int is = -4; is <= 4; ++is) {
    if (is == 0) continue;
    float isc = (0.1f * is + nmax) / mx, sc = 1 / isc, mse = 0;
    for (int i = 0; i < n; ++i) {
      int l = std::min(nmax, nint(isc * x[i]));
      float d = x[i] - sc * l;
      mse += qw[i] * d * d;
    }
    if (mse < best) { best = mse; iscale = isc; }
  }
  float sumlx = 0, suml2 = 0;
  for (int i = 0; i < n; ++i) {
    int l = std::min(nmax, nint(iscale * x[i]));
    L[i] = (u8)l;
    sumlx += qw[i] * x[i] * l;
    suml2 += qw[i] * l * l;
  }
  for (int pass = 0; pass < 5; ++pass) {
    int changed = 0;
    for (int i = 0; i < n; ++i) {
      float slx = sumlx - qw[i] * x[i] * L[i];
      float sl2 = suml2 - qw[i] * L[i] * L[i];
      if (slx > 0 && sl2 > 0) {
        int nl = std::min(nmax, nint(x[i] * sl2 / slx));
        if (nl != L[i]) {
          slx += qw[i] * x[i] * nl;
          sl2 += qw[i] * nl * nl;
          if (slx * slx * suml2 > sumlx * sumlx * sl2) { L[i] = (u8)nl; sumlx = slx; suml2 = sl2; ++changed; }
        }
      }
    }
    if (!changed) break;
  }
  return suml2 > 0.f ? sumlx / suml2 : 0.f;
}

float seq_sq(int n, const float* x) { float s = 0; for (int i = 0; i < n; ++i) s += x[i] * x[i]; return s; }

}  // namespace

#include "ggml_blocks.h"

at::Tensor quantize_ggml(const at::Tensor& w_in, c10::string_view qtype_v, const std::optional<at::Tensor>& imp) {
  const std::string qtype(qtype_v);
  TORCH_CHECK(w_in.dim() == 2, "quantize_ggml expects a 2-D weight");
  auto w = w_in.to(at::kFloat).contiguous();
  const int64_t rows = w.size(0), cols = w.size(1);
  const BlockType bt = block_type(qtype);
  TORCH_CHECK(cols % bt.block == 0, "row length ", cols, " is not a multiple of the ", qtype, " block ", bt.block);
  at::Tensor qw;
  if (imp.has_value() && imp->defined()) {
    qw = imp->to(at::kFloat).contiguous().reshape({-1});
    TORCH_CHECK(qw.numel() == cols, "importance has ", qw.numel(), " entries; the weight has ", cols, " columns");
  }
  const int64_t nb = cols / bt.block;
  auto out = at::empty({rows, nb * bt.size}, at::kByte);
  const float* src = w.data_ptr<float>();
  const float* q = qw.defined() ? qw.data_ptr<float>() : nullptr;
  u8* dst = out.data_ptr<u8>();
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) encode_row(bt, src + r * cols, cols, q, dst + r * nb * bt.size);
  });
  return out;
}

TORCH_LIBRARY_IMPL(hfq, CPU, m) { m.impl("quantize_ggml", &quantize_ggml); }
