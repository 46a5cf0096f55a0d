// AVX-512 kernels (F, BW, VL, DQ, VBMI, VNNI): the integer engine for few rows of x.
//
// Activations are quantized once per call to int16 in blocks of 64 columns, or of the weight's scale group up to
// 256 columns where that is wider (int groups of 128 and more, per-channel rows): scale = max|x| / 32767, so the
// error is at most 2^-16 of the block's largest value. Weight codes are unpacked to int16 exactly, with zero points
// subtracted (signed codes halve the activation error's weight). vpdpwssd multiplies them with x into int32 lanes
// (at most four products per lane, so no overflow); each chunk's lanes are converted to float once and scaled by
// (weight scale) x (activation scale). Q4_1/Q5_1 minimums go through float32 sums of x per 16 columns, so they add
// no activation error. K-quants and int4 rows of whole 128-column units take byte engines at the same int16
// precision (kern_avx512_k8.cpp, kern_avx512_b4.cpp).
//
// Each format unpacks a 64-column chunk into two int16 vectors v0, v1 in the slot order that is cheapest for its
// layout, such that lane l of v0 and lane l of v1 share one weight scale; prep() puts x in the same order.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,fma,f16c,bmi,bmi2")
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "avx512_parts.h"
#include "qlinear.h"

namespace {
#include "decode.h"

using namespace hfq_cpu;

#include "avx512_rows.h"
// ---- the engine: one weight row against MT rows of x ----

// The hardware prefetcher alone leaves this loop waiting on memory (measured: half the read bandwidth), so each
// chunk also prefetches the codes 2 KB ahead in the weight stream (prefetch_start, decode.h).
// Chunks per accumulation block: the int32 products of `cpb` consecutive chunks are summed before one float
// conversion, where the weight scale and the activation scale are both constant over them (prep() quantizes x
// per block of 64 * cpb columns). At most 16 products per int32 lane: codes are below 2^8 in magnitude and x below
// 2^15, so sums stay below 2^31.
int chunks_per_block(const Weight& W) {
  if (W.fmt == FMT_INT && !W.g_idx) {
    if (W.group == W.in) return 4;                                // per channel: one scale per row
    if (W.group >= 128 && (W.group & (W.group - 1)) == 0) return (W.group >= 256 ? 256 : W.group) / 64;
  }
  return 1;
}

// One row of x waits on latency: each vpdpwssd or multiply-add waits on the last one into its accumulator. So even
// and odd chunks take their own float sums, blocks of several chunks (ONE false) four int32 chains (v0, v1 x even,
// odd), and the end of a block is a countdown, not a division per chunk.
template <class R, int MT, bool ONE>
inline void run_row(R& row, const Acts& a, int m0, int64_t r, int64_t out, float* y, const char* pf, int64_t step,
                    int cpb) {
  __m512 f[2][MT];
  __m128 fb[2][MT];
  __m512i p[4][MT];
  for (int m = 0; m < MT; ++m) {
    for (int h = 0; h < 2; ++h) { f[h][m] = _mm512_setzero_ps(); fb[h][m] = _mm_setzero_ps(); }
    for (int h = 0; h < 4; ++h) p[h][m] = _mm512_setzero_si512();
  }
  const int64_t cs = a.chunks;
  int left = cpb;   // chunks until the accumulation block ends
  auto step1 = [&](int64_t c, auto half) __attribute__((always_inline)) {
    constexpr int H = decltype(half)::value;
    _mm_prefetch(pf + c * step, _MM_HINT_T0);
    __m512i v0, v1;
    __m512 s;
    __m128 b4;
    row.chunk(c, v0, v1, s, b4);
    const bool flush = ONE || --left == 0 || c + 1 == cs;
    if (!ONE && flush) left = cpb;
    for (int m = 0; m < MT; ++m) {
      const int64_t i = (m0 + m) * cs + c;
      const int16_t* xq = a.q + i * 64;
      if (ONE) {   // every chunk ends a block: one short chain per chunk, no int32 state between chunks
        const __m512i q = _mm512_dpwssd_epi32(_mm512_dpwssd_epi32(_mm512_setzero_si512(), v0, _mm512_loadu_si512(xq)),
                                              v1, _mm512_loadu_si512(xq + 32));
        f[H][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_mul_ps(s, _mm512_set1_ps(a.d[i])), f[H][m]);
        if (R::has_b) fb[H][m] = _mm_fmadd_ps(b4, _mm_loadu_ps(a.s16 + i * 4), fb[H][m]);
        continue;
      }
      p[2 * H][m] = _mm512_dpwssd_epi32(p[2 * H][m], v0, _mm512_loadu_si512(xq));
      p[2 * H + 1][m] = _mm512_dpwssd_epi32(p[2 * H + 1][m], v1, _mm512_loadu_si512(xq + 32));
      if (flush) {
        const __m512i q = _mm512_add_epi32(_mm512_add_epi32(p[0][m], p[1][m]), _mm512_add_epi32(p[2][m], p[3][m]));
        f[H][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(q), _mm512_mul_ps(s, _mm512_set1_ps(a.d[i])), f[H][m]);
        for (int h = 0; h < 4; ++h) p[h][m] = _mm512_setzero_si512();
      }
      if (R::has_b) fb[H][m] = _mm_fmadd_ps(b4, _mm_loadu_ps(a.s16 + i * 4), fb[H][m]);
    }
  };
  int64_t c = 0;
  for (; c + 2 <= cs; c += 2) {
    step1(c, std::integral_constant<int, 0>());
    step1(c + 1, std::integral_constant<int, 1>());
  }
  if (c < cs) step1(c, std::integral_constant<int, 0>());
  for (int m = 0; m < MT; ++m) {
    float b = 0;
    if (R::has_b) {
      __m128 h = _mm_add_ps(fb[0][m], fb[1][m]);
      h = _mm_add_ps(h, _mm_movehl_ps(h, h));
      h = _mm_add_ss(h, _mm_movehdup_ps(h));
      b = _mm_cvtss_f32(h);
    }
    y[(m0 + m) * out + r] = _mm512_reduce_add_ps(_mm512_add_ps(f[0][m], f[1][m])) + b;
  }
}

template <class R, bool ONE>
inline void rows_of_x(R& row, const Acts& a, int64_t r, int64_t out, float* y, const char* pf, int64_t step, int cpb) {
  row_tiles(a.m, [&](auto mt, int m0) {
    row.seek(r);
    run_row<R, decltype(mt)::value, ONE>(row, a, m0, r, out, y, pf, step, cpb);
  });
}

template <class R>
void run(R row, const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  const int64_t rb = W.fmt == FMT_LUT4 ? W.in / 2 : W.row_bytes, step = rb / a.chunks;
  const char* end = (const char*)(W.w + r1 * rb);   // never prefetch past this task's rows
  const int cpb = chunks_per_block(W);
  for (int64_t r = r0; r < r1; ++r) {
    const char* pf = prefetch_start(W.w, r, rb, end);
    if (cpb == 1) rows_of_x<R, true>(row, a, r, W.out, y, pf, step, cpb);
    else rows_of_x<R, false>(row, a, r, W.out, y, pf, step, cpb);
  }
}

Slot slot_of(const Weight& W) {
  if (W.fmt == FMT_LUT4) return EO;
  if (W.fmt == FMT_INT) return W.bits == 4 ? EO : S16;
  if (W.fmt >= FMT_Q4_0 && W.fmt <= FMT_Q8_0) return L32;
  return NAT;
}

bool fast(const Weight& W) {
  if (W.g_idx) return false;
  if (W.fmt == FMT_LUT4) return W.in % 64 == 0 && (W.group >= 64 || W.group == 32);
  if (W.fmt == FMT_INT) return W.group == W.in || (W.group >= 16 && (W.group & (W.group - 1)) == 0);
  return true;
}

void prep(const Weight& W, Acts& a) {
  if (avx512::k8(W, a)) return avx512::prep_k8(W, a);
  if (avx512::q8(W, a)) return avx512::prep_q8(W, a);
  if (avx512::b4(W, a)) return avx512::prep_b4(W, a);
  const Slot s = slot_of(W);
  const int cpb = chunks_per_block(W);
  alignas(64) int idx[4][16];
  for (int t = 0; t < 4; ++t)
    for (int l = 0; l < 16; ++l) idx[t][l] = slot_col(s, 16 * t + l);
  __m512i ix[4];
  for (int t = 0; t < 4; ++t) ix[t] = _mm512_load_si512(idx[t]);
  __m512 t[4][4];   // slot vectors of up to four chunks of one block
  for (int m = 0; m < a.m; ++m) {
    const float* x = a.x + m * a.k;
    for (int64_t c0 = 0; c0 < a.chunks; c0 += cpb) {
      const int nc = (int)(a.chunks - c0 < cpb ? a.chunks - c0 : cpb);
      __m512 amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
      for (int b = 0; b < nc; ++b) {
        const int64_t c = c0 + b;
        __m512 v[4];
        for (int j = 0; j < 4; ++j) {
          const int64_t k = 64 * c + 16 * j, n = a.k - k;
          const __mmask16 mk = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
          v[j] = _mm512_maskz_loadu_ps(mk, x + (n > 0 ? k : 0));
          a.s16[(m * a.chunks + c) * 4 + j] = _mm512_reduce_add_ps(v[j]);
        }
        for (int j = 0; j < 4; ++j) {   // slot l of vector j holds column idx[j][l]
          const __m512 lo = _mm512_permutex2var_ps(v[0], ix[j], v[1]), hi = _mm512_permutex2var_ps(v[2], ix[j], v[3]);
          t[b][j] = _mm512_mask_blend_ps(_mm512_test_epi32_mask(ix[j], _mm512_set1_epi32(32)), lo, hi);
          amax = _mm512_max_ps(amax, _mm512_abs_ps(t[b][j]));
          sum = _mm512_add_ps(sum, t[b][j]);
        }
      }
      const float mx = _mm512_reduce_max_ps(amax), total = _mm512_reduce_add_ps(sum);
      const bool finite = total - total == 0.f;   // a nan or inf in x must reach y, as in the reference
      const float inv = mx > 0 && finite ? 32767.f / mx : 0.f;
      const __m512 iv = _mm512_set1_ps(inv);
      for (int b = 0; b < nc; ++b) {
        const int64_t i = m * a.chunks + c0 + b;
        a.d[i] = finite ? mx / 32767.f : __builtin_nanf("");
        for (int j = 0; j < 4; ++j)
          _mm256_storeu_si256((__m256i*)(a.q + i * 64 + 16 * j),
                              _mm512_cvtsepi32_epi16(_mm512_cvtps_epi32(_mm512_mul_ps(t[b][j], iv))));
      }
    }
  }
}

void gemv(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  if (!fast(W)) return gemv_generic<dot>(W, a, r0, r1, y);
  if (avx512::k8(W, a)) return avx512::gemv_k8(W, a, r0, r1, y);
  if (avx512::q8(W, a)) return avx512::gemv_q8(W, a, r0, r1, y);
  if (avx512::b4(W, a)) return avx512::gemv_b4(W, a, r0, r1, y);
  switch (W.fmt) {
    case FMT_INT:
      if (W.bits == 4) return run(IntRow<4>(W), W, a, r0, r1, y);
      if (W.bits == 8) return run(IntRow<8>(W), W, a, r0, r1, y);
      return run(IntRow<0>(W), W, a, r0, r1, y);
    case FMT_LUT4: {
      float mx = 0;
      for (int i = 0; i < 16; ++i) mx = W.lut[i] > mx ? W.lut[i] : (-W.lut[i] > mx ? -W.lut[i] : mx);
      const float scale = mx > 0 ? 16383.f / mx : 0.f;   // four products of 2^14 x 2^15 stay below 2^31
      alignas(64) int16_t t[32];
      for (int i = 0; i < 32; ++i) t[i] = (int16_t)__builtin_lrintf(W.lut[i & 15] * scale);
      return run(Lut4Row(W, _mm512_load_si512(t), mx > 0 ? mx / 16383.f : 0.f), W, a, r0, r1, y);
    }
    case FMT_Q4_0: return run(LegacyRow<FMT_Q4_0>(W), W, a, r0, r1, y);
    case FMT_Q4_1: return run(LegacyRow<FMT_Q4_1>(W), W, a, r0, r1, y);
    case FMT_Q5_0: return run(LegacyRow<FMT_Q5_0>(W), W, a, r0, r1, y);
    case FMT_Q5_1: return run(LegacyRow<FMT_Q5_1>(W), W, a, r0, r1, y);
    case FMT_Q8_0: return run(LegacyRow<FMT_Q8_0>(W), W, a, r0, r1, y);
    default: return gemv_generic<dot>(W, a, r0, r1, y);
  }
}


}  // namespace

namespace hfq_cpu {
const Kernels kernels_avx512 = {"avx512", avx512::dequant, fast, prep, gemv};
// AVX512_BF16 (Sapphire Rapids, Zen 4; not Ice Lake) only changes how bfloat16 prefill tiles are rounded.
const Kernels kernels_avx512bf16 = {"avx512bf16", avx512bf16::dequant, fast, prep, gemv};
}
