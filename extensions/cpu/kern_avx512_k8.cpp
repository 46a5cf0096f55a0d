// AVX-512 k-quant GEMV, the byte engine: codes stay bytes, vpmaddubsw multiplies code and x pairs into int16, and
// vpdpwssd multiplies those by the integer sub-block scales into int32 for the whole 256-column super-block: one
// float conversion per super-block. Minimums and the fixed code offsets (Q3_K's 4, Q6_K's 32) go through sums of
// the quantized x per 16 columns. x is quantized once per call, per super-block, in one of two ways:
// - int16 (the default): x16 = 256 * hi + lo, scale max|x| / 32639, with hi and lo signed bytes (hi never reaches
//   128) in two planes, one int32 sum per plane, joined in float. Error at most 2^-16 of the super-block's largest
//   |x|, as the int16 engine of kern_avx512.cpp, whose unpacking to int16 and scale multiplies it saves.
// - int8, as llama.cpp computes k-quants (Q8_K): scale max|x| / 127, error up to 1/254 of the largest |x| per
//   element (what llama.cpp accepts for GGUF models), for half the multiplies: opt-in (HFQ_CPU_ACTIVATIONS=int8,
//   docs/kernels.md).
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,fma,f16c,bmi,bmi2")
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "avx512_parts.h"
#include "qlinear.h"

namespace {
#include "decode.h"

using namespace hfq_cpu;

#include "avx512_rows.h"

inline __m512i shift_halves(__m512i v, int lo, int hi) {   // words of the low 256 bits >> lo, of the high >> hi
  return _mm512_srlv_epi16(v, _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16((short)lo),
                                                      _mm512_set1_epi16((short)hi)));
}
inline __m512i dup256(const u8* p) { return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i*)p)); }

// Q4_K/Q5_K bytes hold two 32-column sub-blocks per byte row; per 128 columns, x is [0..31, 64..95, 32..63, 96..127].
template <int FMT>
constexpr bool paired() { return FMT == FMT_Q4_K || FMT == FMT_Q5_K; }

template <int FMT>
struct K8Row {
  static constexpr int BYTES = KRow<FMT>::BYTES;
  KRow<FMT> k;                 // super-block scales (scw, B, d) from the int16 engine
  __m512i idx[2][2];           // [half][lo/hi]: the 16-column segment of each int16 word after vpmaddubsw
  explicit K8Row(const Weight& w) : k(w) {
    for (int h = 0; h < 2; ++h)
      for (int v = 0; v < 2; ++v) {
        alignas(64) short t[32];
        for (int j = 0; j < 32; ++j) {
          if (paired<FMT>())   // word j: sub-block 4h + 2(j/16) + v, i.e. segments 8h + 4(j/16) + 2v
            t[j] = (short)(8 * h + 4 * (j / 16) + 2 * v);
          else                 // natural: words 0..31 are columns 128h + 64v + 2j, segment 8h + 4v + j/8
            t[j] = (short)(8 * h + 4 * v + j / 8);
        }
        idx[h][v] = _mm512_load_si512(t);
      }
  }
  void seek(int64_t r) { k.seek(r); }
  // Super-block b: scales, and the per-segment float terms (minimums, or the code offset times the scale).
  HFQ_INLINE void superblock(const u8* b) {
    k.superblock(b);
    if (FMT == FMT_Q6_K || FMT == FMT_Q3_K) {
      const __m512 sc = _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(_mm512_castsi512_si256(k.scw)));
      _mm512_storeu_ps(k.B, _mm512_mul_ps(_mm512_set1_ps(-(FMT == FMT_Q6_K ? 32.f : 4.f) * k.d), sc));
    }
  }
  // Unsigned codes of half h (128 columns) as two vectors of 64 bytes, in the order prep_k8 lays x out.
  HFQ_INLINE void codes(const u8* b, int h, __m512i& lo, __m512i& hi) const {
    const __m512i m4 = _mm512_set1_epi8(0xF), m3 = _mm512_set1_epi8(3), m1 = _mm512_set1_epi8(1);
    if (paired<FMT>()) {
      const __m512i q = _mm512_loadu_si512(b + (FMT == FMT_Q4_K ? 16 : 48) + 64 * h);
      lo = _mm512_and_si512(q, m4);
      hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
      if (FMT == FMT_Q5_K) {   // column 64g + 32s + l: bit 2g + s of qh[l]
        const __m512i qh = dup256(b + 16);
        lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(shift_halves(qh, 4 * h, 4 * h + 2), m1), 4));
        hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(shift_halves(qh, 4 * h + 1, 4 * h + 3), m1), 4));
      }
    } else if (FMT == FMT_Q6_K) {   // column 128h + 64n + 32c + l: nibble n of ql[64h + 32c + l], bits 2(2n+c) of qh
      const __m512i ql = _mm512_loadu_si512(b + 64 * h), qh = dup256(b + 128 + 32 * h);
      lo = _mm512_or_si512(_mm512_and_si512(ql, m4), _mm512_slli_epi16(_mm512_and_si512(shift_halves(qh, 0, 2), m3), 4));
      hi = _mm512_or_si512(_mm512_and_si512(_mm512_srli_epi16(ql, 4), m4),
                           _mm512_slli_epi16(_mm512_and_si512(shift_halves(qh, 4, 6), m3), 4));
    } else {   // Q2_K, Q3_K: column 128h + 32k + l is bits 2k of qs[32h + l]
      const __m512i q = dup256(b + (FMT == FMT_Q3_K ? 32 : 16) + 32 * h);
      lo = _mm512_and_si512(shift_halves(q, 0, 2), m3);
      hi = _mm512_and_si512(shift_halves(q, 4, 6), m3);
      if (FMT == FMT_Q3_K) {   // column e: bit e / 32 of hmask[e % 32]
        const __m512i hm = dup256(b);
        lo = _mm512_or_si512(lo, _mm512_slli_epi16(_mm512_and_si512(shift_halves(hm, 4 * h, 4 * h + 1), m1), 2));
        hi = _mm512_or_si512(hi, _mm512_slli_epi16(_mm512_and_si512(shift_halves(hm, 4 * h + 2, 4 * h + 3), m1), 2));
      }
    }
  }
};

template <int FMT, int MT, int P>   // P: byte planes of x (1: int8, 2: int16 as hi and lo)
inline void k8_row(K8Row<FMT>& row, const Acts& a, int m0, int64_t r, int64_t out, float* y, const char* pf) {
  __m512 f[MT], fb[MT];
  for (int m = 0; m < MT; ++m) f[m] = fb[m] = _mm512_setzero_ps();
  const int64_t nsb = a.k / 256, cs = a.chunks;
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const u8* b = row.k.row + sb * K8Row<FMT>::BYTES;
    for (int o = 0; o < K8Row<FMT>::BYTES; o += 64) _mm_prefetch(pf + sb * K8Row<FMT>::BYTES + o, _MM_HINT_T0);
    row.superblock(b);
    __m512i p[MT], p2[MT], l[MT], l2[MT];   // two chains per plane: each vpdpwssd waits on the last one
    for (int m = 0; m < MT; ++m) p[m] = p2[m] = l[m] = l2[m] = _mm512_setzero_si512();
    for (int h = 0; h < 2; ++h) {
      __m512i lo, hi;
      row.codes(b, h, lo, hi);
      const __m512i slo = _mm512_permutexvar_epi16(row.idx[h][0], row.k.scw);
      const __m512i shi = _mm512_permutexvar_epi16(row.idx[h][1], row.k.scw);
      for (int m = 0; m < MT; ++m) {
        const int8_t* xq = reinterpret_cast<const int8_t*>(a.q + ((m0 + m) * cs + 4 * sb) * 64) + 128 * h;
        p[m] = _mm512_dpwssd_epi32(p[m], _mm512_maddubs_epi16(lo, _mm512_loadu_si512(xq)), slo);
        p2[m] = _mm512_dpwssd_epi32(p2[m], _mm512_maddubs_epi16(hi, _mm512_loadu_si512(xq + 64)), shi);
        if (P == 2) {   // the low plane, 256 bytes on
          l[m] = _mm512_dpwssd_epi32(l[m], _mm512_maddubs_epi16(lo, _mm512_loadu_si512(xq + 256)), slo);
          l2[m] = _mm512_dpwssd_epi32(l2[m], _mm512_maddubs_epi16(hi, _mm512_loadu_si512(xq + 320)), shi);
        }
      }
    }
    const __m512 B = _mm512_loadu_ps(row.k.B);
    for (int m = 0; m < MT; ++m) {
      const int64_t i = (m0 + m) * cs + 4 * sb;
      // Lanes stay below 2^24 (at most 4 products of |63 * 128 * 2| by |scale| <= 128 per chain): cvt is exact.
      __m512 t = _mm512_cvtepi32_ps(_mm512_add_epi32(p[m], p2[m]));
      if (P == 2) t = _mm512_fmadd_ps(t, _mm512_set1_ps(256.f), _mm512_cvtepi32_ps(_mm512_add_epi32(l[m], l2[m])));
      f[m] = _mm512_fmadd_ps(t, _mm512_set1_ps(row.k.d * a.d[i]), f[m]);
      fb[m] = _mm512_fmadd_ps(B, _mm512_loadu_ps(a.s16 + i * 4), fb[m]);
    }
  }
  for (int m = 0; m < MT; ++m) y[(m0 + m) * out + r] = _mm512_reduce_add_ps(_mm512_add_ps(f[m], fb[m]));
}

template <int FMT, int P>
void run_k8(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  K8Row<FMT> row(W);
  const char* end = (const char*)(W.w + r1 * W.row_bytes);
  for (int64_t r = r0; r < r1; ++r) {
    const char* pf = prefetch_start(W.w, r, W.row_bytes, end);
    row_tiles(a.m, [&](auto mt, int m0) {
      row.seek(r);
      k8_row<FMT, decltype(mt)::value, P>(row, a, m0, r, W.out, y, pf);
    });
  }
}

}  // namespace

namespace hfq_cpu::avx512 {

bool k8(const Weight& W, const Acts&) { return W.fmt >= FMT_Q2_K && W.fmt <= FMT_Q6_K && W.in % 256 == 0; }

void prep_k8(const Weight& W, Acts& a) {
  const bool pair = W.fmt == FMT_Q4_K || W.fmt == FMT_Q5_K;
  for (int m = 0; m < a.m; ++m) {
    const float* x = a.x + m * a.k;
    for (int64_t sb = 0; sb < a.k / 256; ++sb) {
      const float* xs = x + 256 * sb;
      const int64_t i = m * a.chunks + 4 * sb;
      __m512 amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
      for (int j = 0; j < 16; ++j) {
        const __m512 v = _mm512_loadu_ps(xs + 16 * j);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        sum = _mm512_add_ps(sum, v);
      }
      const float mx = _mm512_reduce_max_ps(amax), total = _mm512_reduce_add_ps(sum);
      const bool finite = total - total == 0.f;   // a nan or inf in x must reach y, as in the reference
      const float top = a.int8 ? 127.f : kPlaneLevels;
      const float d = finite ? mx / top : __builtin_nanf("");
      const __m512 iv = _mm512_set1_ps(mx > 0 && finite ? top / mx : 0.f);
      for (int c = 0; c < 4; ++c) a.d[i + c] = d;
      int8_t* q = reinterpret_cast<int8_t*>(a.q + i * 64);
      for (int j = 0; j < 16; ++j) {   // destination of the 16 columns at 16j: paired order swaps 32-column runs
        int dst = 16 * j;
        if (pair) {
          const int h = j / 8, run = (j % 8) / 2, within = 16 * (j % 2);
          static const int order[4] = {0, 2, 1, 3};   // runs 0,1,2,3 of a half go to slots 0,2,1,3
          dst = 128 * h + 32 * order[run] + within;
        }
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(xs + 16 * j), iv));
        if (a.int8) {
          _mm_storeu_si128((__m128i*)(q + dst), _mm512_cvtsepi32_epi8(v));
        } else {   // two planes, 256 bytes apart
          const __m512i hi = plane_hi(v);
          _mm_storeu_si128((__m128i*)(q + dst), _mm512_cvtepi32_epi8(hi));
          _mm_storeu_si128((__m128i*)(q + 256 + dst), _mm512_cvtepi32_epi8(_mm512_sub_epi32(v, _mm512_slli_epi32(hi, 8))));
        }
        // The minimum/offset terms use the sums of the quantized x: then w = d*sc*q - m is applied to one
        // and the same x, and the rounding error of x is weighted by w, not by the larger d*sc*q.
        a.s16[i * 4 + j] = d * (float)_mm512_reduce_add_epi32(v);
      }
    }
  }
}

template <int P>
void gemv_planes(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  switch (W.fmt) {
    case FMT_Q2_K: return run_k8<FMT_Q2_K, P>(W, a, r0, r1, y);
    case FMT_Q3_K: return run_k8<FMT_Q3_K, P>(W, a, r0, r1, y);
    case FMT_Q4_K: return run_k8<FMT_Q4_K, P>(W, a, r0, r1, y);
    case FMT_Q5_K: return run_k8<FMT_Q5_K, P>(W, a, r0, r1, y);
    default: return run_k8<FMT_Q6_K, P>(W, a, r0, r1, y);
  }
}

void gemv_k8(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  return a.int8 ? gemv_planes<1>(W, a, r0, r1, y) : gemv_planes<2>(W, a, r0, r1, y);
}

}  // namespace hfq_cpu::avx512
