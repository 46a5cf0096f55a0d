// AVX2 k-quant GEMV on bytes (Q2_K..Q6_K), for CPUs without AVX-512. x is quantized once per call per 256-column
// super-block: to int16 by default (32639 levels), stored as two signed byte planes x = 256 hi + lo, or to int8
// (127 levels, HFQ_CPU_ACTIVATIONS=int8: llama.cpp's Q8_K). Codes stay unsigned bytes: vpmaddubsw multiplies code
// and x byte pairs into int16, vpmaddwd multiplies those by the 16-column sub-block scales into int32, and each
// plane is converted to float once per super-block. Minimums and the fixed code offsets (Q3_K's 4, Q6_K's 32) go
// through sums of the quantized x per 16 columns. The int16 result is exactly the int16 dot product: the bytes
// only split it, so unpacking stays one byte per code (widening codes to int16 cost four times as many operations).
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "avx2_parts.h"
#include "qlinear.h"

namespace {
#include "decode.h"
#include "avx2_common.h"

using namespace hfq_cpu;

HFQ_INLINE __m256i ld(const void* p) { return _mm256_loadu_si256((const __m256i*)p); }
template <int N>
HFQ_INLINE __m256i low_bits(__m256i v, int shift) {   // bits [shift, shift + N) of every byte
  return _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift)), _mm256_set1_epi8((char)((1 << N) - 1)));
}

// One row's super-blocks: the decoded scales, and the 32 codes of each 32-column group g = 0..7 (columns 32g..32g+31
// of the super-block, in natural order, as bytes).
template <int FMT>
struct KB {
  static constexpr int BYTES = ggml_block_bytes(FMT);
  __m256i SL, SH;   // the integer scales of segments 0-7 (SL) and 8-15 (SH) as words, in both 128-bit lanes
  __m256 b0, b1;    // float factor of each segment's sum of x: -(minimum), or -offset * d * scale
  float d;
  __m256i pick[4];  // pshufb masks: words 0-7 <- scale word 2t, words 8-15 <- word 2t + 1 (of a lane of SL/SH)
  KB() {
    for (int t = 0; t < 4; ++t) {
      alignas(32) uint8_t m[32];
      for (int i = 0; i < 32; ++i) m[i] = (uint8_t)(2 * (2 * t + i / 16) + (i & 1));
      pick[t] = _mm256_load_si256((const __m256i*)m);
    }
  }
  HFQ_INLINE void set(__m256i words, __m256 f0, __m256 f1) {
    SL = _mm256_permute2x128_si256(words, words, 0x00);
    SH = _mm256_permute2x128_si256(words, words, 0x11);
    b0 = f0;
    b1 = f1;
  }
  HFQ_INLINE static __m256 f8(__m128i bytes) { return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(bytes)); }
  HFQ_INLINE void superblock(const u8* p) {
    if (FMT == FMT_Q4_K || FMT == FMT_Q5_K) {   // 6-bit scales and mins, ggml's packing (k4_scale_min)
      // bytes 0-7: scales j = 0..7, bytes 8-15: minimums. j < 4: low 6 bits of s[j] (scale), s[j + 4] (min);
      // j >= 4: a nibble of s[j + 4] and the top two bits of s[j - 4] (scale) or s[j] (min).
      const __m128i s = _mm_loadu_si128((const __m128i*)(p + 4));   // 12 bytes used (p + 16 is in the block)
      const __m128i a = _mm_shuffle_epi8(s, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
      const __m128i top = _mm_shuffle_epi8(s, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
      const __m128i low = _mm_or_si128(
          _mm_and_si128(a, _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 0, 0, 0, 0)),
          _mm_and_si128(_mm_srli_epi16(a, 4), _mm_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 15, 15, 15, 15)));
      const __m128i v = _mm_or_si128(low, _mm_and_si128(_mm_srli_epi16(top, 2), _mm_set1_epi8(0x30)));
      const __m128i mins = _mm_unpackhi_epi8(v, v);   // one per segment
      const __m256 nd = _mm256_set1_ps(-h2f(p + 2));
      d = h2f(p);
      set(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v)), _mm256_mul_ps(nd, f8(mins)),
          _mm256_mul_ps(nd, f8(_mm_srli_si128(mins, 8))));
    } else if (FMT == FMT_Q2_K) {   // scale in the low nibble, minimum in the high one
      const __m128i v = _mm_loadu_si128((const __m128i*)p), m4 = _mm_set1_epi8(0xF);
      const __m128i mins = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
      const __m256 nd = _mm256_set1_ps(-h2f(p + 82));
      d = h2f(p + 80);
      set(_mm256_cvtepu8_epi16(_mm_and_si128(v, m4)), _mm256_mul_ps(nd, f8(mins)),
          _mm256_mul_ps(nd, f8(_mm_srli_si128(mins, 8))));
    } else {   // Q3_K, Q6_K: signed scales and a fixed code offset (32, 4)
      __m256i w;
      if (FMT == FMT_Q6_K) {
        d = h2f(p + 208);
        w = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 192)));
      } else {   // q3_scale: low nibbles from bytes 0..7, two high bits from bytes 8..11
        d = h2f(p + 108);
        const __m128i s = _mm_loadu_si128((const __m128i*)(p + 96));
        const __m128i lo = _mm_and_si128(_mm_unpacklo_epi64(s, _mm_srli_epi16(s, 4)), _mm_set1_epi8(0xF));
        const __m128i hi = _mm_and_si128(_mm_srlv_epi32(_mm_set1_epi32((int)load_u32(p + 104)), _mm_set_epi32(6, 4, 2, 0)),
                                         _mm_set1_epi8(3));
        w = _mm256_sub_epi16(_mm256_cvtepu8_epi16(_mm_or_si128(lo, _mm_slli_epi16(hi, 4))), _mm256_set1_epi16(32));
      }
      const __m256 k = _mm256_set1_ps(-(FMT == FMT_Q6_K ? 32.f : 4.f) * d);
      set(w, _mm256_mul_ps(k, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_castsi256_si128(w)))),
          _mm256_mul_ps(k, _mm256_cvtepi32_ps(_mm256_cvtepi16_epi32(_mm256_extracti128_si256(w, 1)))));
    }
  }
  HFQ_INLINE __m256i scale(int g) const {   // words 0-7: segment 2g, words 8-15: segment 2g + 1
    return _mm256_shuffle_epi8(g < 4 ? SL : SH, pick[g & 3]);
  }
  HFQ_INLINE __m256i codes(const u8* p, int g) const {
    const int h = g >> 2, t = g & 3;
    if (FMT == FMT_Q4_K || FMT == FMT_Q5_K) {   // group g: nibble g & 1 of qs[32 (g / 2) + l]
      __m256i c = low_bits<4>(ld(p + (FMT == FMT_Q4_K ? 16 : 48) + 32 * (g >> 1)), 4 * (g & 1));
      if (FMT == FMT_Q5_K) c = _mm256_or_si256(c, _mm256_slli_epi16(low_bits<1>(ld(p + 16), g), 4));   // bit g of qh[l]
      return c;
    }
    if (FMT == FMT_Q6_K) {   // nibble t / 2 of ql[64h + 32(t & 1) + l], bits 2t of qh[32h + l]
      const __m256i lo = low_bits<4>(ld(p + 64 * h + 32 * (t & 1)), 4 * (t >> 1));
      return _mm256_or_si256(lo, _mm256_slli_epi16(low_bits<2>(ld(p + 128 + 32 * h), 2 * t), 4));
    }
    // Q2_K, Q3_K: bits 2t of qs[32h + l]; Q3_K's third bit is bit g of hmask[l]
    const __m256i c = low_bits<2>(ld(p + (FMT == FMT_Q3_K ? 32 : 16) + 32 * h), 2 * t);
    if (FMT == FMT_Q2_K) return c;
    return _mm256_or_si256(c, _mm256_slli_epi16(low_bits<1>(ld(p), g), 2));
  }
};

// One weight row against MT rows of x. SPLIT: int16 x as two byte planes (the low plane 256 bytes after the high).
template <int FMT, int MT, bool SPLIT>
HFQ_INLINE void kq_row(KB<FMT>& kb, const u8* row, const Acts& a, int m0, int64_t r, int64_t out, float* y,
                       const char* pf) {
  constexpr int A = MT == 1 ? 2 : 1;   // one row of x: even and odd groups take their own chains
  __m256 f[MT];
  for (int m = 0; m < MT; ++m) f[m] = _mm256_setzero_ps();
  const int64_t nsb = a.k / 256, cs = a.chunks;
  for (int64_t sb = 0; sb < nsb; ++sb) {
    const u8* p = row + sb * KB<FMT>::BYTES;
    for (int o = 0; o < KB<FMT>::BYTES; o += 64) _mm_prefetch(pf + sb * KB<FMT>::BYTES + o, _MM_HINT_T0);
    kb.superblock(p);
    __m256i hi[MT][A], lo[MT][A];
    for (int m = 0; m < MT; ++m)
      for (int c = 0; c < A; ++c) hi[m][c] = lo[m][c] = _mm256_setzero_si256();
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      const __m256i c = kb.codes(p, g), s = kb.scale(g);
      for (int m = 0; m < MT; ++m) {
        const int8_t* xq = reinterpret_cast<const int8_t*>(a.q + ((m0 + m) * cs + 4 * sb) * 64) + 32 * g;
        __m256i& H = hi[m][g % A];
        H = _mm256_add_epi32(H, _mm256_madd_epi16(_mm256_maddubs_epi16(c, ld(xq)), s));
        if (SPLIT) {
          __m256i& L = lo[m][g % A];
          L = _mm256_add_epi32(L, _mm256_madd_epi16(_mm256_maddubs_epi16(c, ld(xq + 256)), s));
        }
      }
    }
    const __m256 b0 = kb.b0, b1 = kb.b1;
    for (int m = 0; m < MT; ++m) {
      const int64_t i = (m0 + m) * cs + 4 * sb;
      const float dd = kb.d * a.d[i];
      __m256i h = hi[m][0];
      if (A == 2) h = _mm256_add_epi32(h, hi[m][A - 1]);
      f[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(h), _mm256_set1_ps(SPLIT ? 256.f * dd : dd), f[m]);
      if (SPLIT) {
        __m256i l = lo[m][0];
        if (A == 2) l = _mm256_add_epi32(l, lo[m][A - 1]);
        f[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(l), _mm256_set1_ps(dd), f[m]);
      }
      f[m] = _mm256_fmadd_ps(b0, _mm256_loadu_ps(a.s16 + i * 4), f[m]);
      f[m] = _mm256_fmadd_ps(b1, _mm256_loadu_ps(a.s16 + i * 4 + 8), f[m]);
    }
  }
  for (int m = 0; m < MT; ++m) y[(m0 + m) * out + r] = hsum(f[m]);
}

template <int FMT, bool SPLIT>
void run_kq(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  KB<FMT> kb;
  const char* end = (const char*)(W.w + r1 * W.row_bytes);   // never prefetch past this task's rows
  for (int64_t r = r0; r < r1; ++r) {
    const u8* row = W.w + r * W.row_bytes;
    const char* pf = prefetch_start(W.w, r, W.row_bytes, end);
    row_tiles(a.m, [&](auto mt, int m0) { kq_row<FMT, decltype(mt)::value, SPLIT>(kb, row, a, m0, r, W.out, y, pf); });
  }
}

template <int FMT>
void run(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  if (a.int8) run_kq<FMT, false>(W, a, r0, r1, y);
  else run_kq<FMT, true>(W, a, r0, r1, y);
}

}  // namespace

namespace hfq_cpu::avx2 {

bool kq(const Weight& W) { return W.fmt >= FMT_Q2_K && W.fmt <= FMT_Q6_K && W.in % 256 == 0; }

void prep_kq(const Weight& W, Acts& a) {
  (void)W;
  const float levels = a.int8 ? 127.f : kPlaneLevels;
  for (int m = 0; m < a.m; ++m) {
    const float* x = a.x + m * a.k;
    for (int64_t sb = 0; sb < a.k / 256; ++sb) {
      const float* xs = x + 256 * sb;
      const int64_t i = m * a.chunks + 4 * sb;
      float mx = 0.f, total = 0.f;
      for (int j = 0; j < 256; ++j) { mx = std::fabs(xs[j]) > mx ? std::fabs(xs[j]) : mx; total += xs[j]; }
      const bool finite = total - total == 0.f;   // a nan or inf in x must reach y, as in the reference
      const float d = finite ? mx / levels : __builtin_nanf("");
      const float inv = mx > 0 && finite ? levels / mx : 0.f;
      for (int c = 0; c < 4; ++c) a.d[i + c] = d;
      int8_t* q = reinterpret_cast<int8_t*>(a.q + i * 64);
      for (int j = 0; j < 16; ++j) {
        int s = 0;
        for (int l = 0; l < 16; ++l) {
          const int k = 16 * j + l, v = (int)__builtin_lrintf(xs[k] * inv);
          s += v;
          if (a.int8) {
            q[k] = (int8_t)v;
          } else {   // v = 256 hi + lo, both signed bytes
            const int hi = plane_hi(v);
            q[k] = (int8_t)hi;
            q[256 + k] = (int8_t)(v - 256 * hi);
          }
        }
        // The minimum/offset terms use the sums of the quantized x: then w = d*sc*q - m is applied to one and the
        // same x, and the rounding error of x is weighted by w, not by the larger d*sc*q.
        a.s16[i * 4 + j] = d * (float)s;
      }
    }
  }
}

void gemv_kq(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  switch (W.fmt) {
    case FMT_Q2_K: return run<FMT_Q2_K>(W, a, r0, r1, y);
    case FMT_Q3_K: return run<FMT_Q3_K>(W, a, r0, r1, y);
    case FMT_Q4_K: return run<FMT_Q4_K>(W, a, r0, r1, y);
    case FMT_Q5_K: return run<FMT_Q5_K>(W, a, r0, r1, y);
    default: return run<FMT_Q6_K>(W, a, r0, r1, y);
  }
}

}  // namespace hfq_cpu::avx2
