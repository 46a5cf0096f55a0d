// AVX-512 exact dequantization, included by the two units that compile it (kern_avx512_dequant.cpp and, with
// AVX512_BF16's one-instruction bfloat16 rounding, kern_avx512bf16_dequant.cpp): the engine's unpackers give the
// codes, then the reference's float32 operations in its order (no fused multiply-add: -ffp-contract=off), rounded
// to nearest even into the output dtype. The includer sets the target, HFQ_DEQUANT_NS and HFQ_DEQUANT_BF16.
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "avx512_parts.h"
#include "qlinear.h"

namespace {
#include "decode.h"

using namespace hfq_cpu;

#include "avx512_rows.h"
// ---- exact dequantization, vectorized for int (4 and 8 bits) and nf4/fp4; GGML blocks use decode.h ----

// bfloat16, rounded to nearest even as c10::BFloat16 does (NaN -> 0x7FC0), in integer steps.
inline void store_bf16_int(const __m512 v, uint16_t* o) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i r = _mm512_srli_epi32(_mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7FFF)),
                                                       _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))), 16);
  const __mmask16 nan = _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  _mm256_storeu_si256((__m256i*)o, _mm512_cvtepi32_epi16(_mm512_mask_mov_epi32(r, nan, _mm512_set1_epi32(0x7FC0))));
}

inline void store16(const __m512 v, void* out, int64_t i, int ot) {   // round 16 floats into the output type
  if (ot == OUT_F32) { _mm512_storeu_ps(static_cast<float*>(out) + i, v); return; }
  uint16_t* o = static_cast<uint16_t*>(out) + i;
  if (ot == OUT_F16) { _mm256_storeu_si256((__m256i*)o, _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT)); return; }
#if HFQ_DEQUANT_BF16
  // vcvtneps2bf16 rounds to nearest even too, but flushes subnormals to zero and keeps NaN payloads: those lanes
  // (rare: a subnormal absmax, a NaN scale) take the integer steps.
  const __mmask16 odd = _mm512_fpclass_ps_mask(v, 0x01 | 0x20 | 0x80);   // quiet NaN, subnormal, signalling NaN
  if (__builtin_expect(odd, 0)) return store_bf16_int(v, o);
  _mm256_storeu_si256((__m256i*)o, (__m256i)_mm512_cvtneps_pbh(v));
#else
  store_bf16_int(v, o);
#endif
}

// 32 codes of one byte-pair layout -> natural order: byte j holds columns 2j and 2j+1 (first and second nibble).
inline void pairs(__m512 first, __m512 second, __m512& y0, __m512& y1) {
  const __m512i lo = _mm512_set_epi32(23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  y0 = _mm512_permutex2var_ps(first, lo, second);
  y1 = _mm512_permutex2var_ps(first, _mm512_add_epi32(lo, _mm512_set1_epi32(8)), second);
}


// Exact GGML dequantization from the engine's unpackers: the same codes, then the reference's float32 ops.
inline __m512 half_words(__m512i v, int h) {   // int16 words 16h..16h+15 of v as 16 floats
  return _mm512_cvtepi32_ps(_mm512_cvtepi16_epi32(h ? _mm512_extracti64x4_epi64(v, 1) : _mm512_castsi512_si256(v)));
}

template <int FMT>
void dequant_k(const Weight& W, int64_t r0, int64_t r1, void* out, int ot) {
  KRow<FMT> row(W);
  for (int64_t r = r0; r < r1; ++r) {
    row.seek(r);
    const int64_t base = (r - r0) * W.in;
    for (int64_t sb = 0; sb < W.in / 256; ++sb) {
      const u8* b = row.row + sb * KRow<FMT>::BYTES;
      float dl[16], ml[16];
      row.exact(b, dl, ml);
      for (int q = 0; q < 4; ++q) {
        __m512i v[2];
        row.codes(b, q, v[0], v[1]);
        for (int h = 0; h < 4; ++h) {   // NAT: words 16(h&1).. of v[h/2] are segment 4q + h
          const int seg = 4 * q + h;
          const __m512 y = _mm512_sub_ps(_mm512_mul_ps(_mm512_set1_ps(dl[seg]), half_words(v[h >> 1], h & 1)),
                                         _mm512_set1_ps(ml[seg]));
          store16(y, out, base + sb * 256 + 64 * q + 16 * h, ot);
        }
      }
    }
  }
}

template <int FMT>
void dequant_legacy(const Weight& W, int64_t r0, int64_t r1, void* out, int ot) {
  LegacyRow<FMT> row(W);
  constexpr bool MIN = FMT == FMT_Q4_1 || FMT == FMT_Q5_1;
  for (int64_t r = r0; r < r1; ++r) {
    row.seek(r);
    const int64_t base = (r - r0) * W.in;
    for (int64_t c = 0; c < (W.in + 63) / 64; ++c) {
      __m512i v0, v1;
      __m512 s;
      __m128 b4;
      row.chunk(c, v0, v1, s, b4);
      for (int blk = 0; blk < 2 && 2 * c + blk < W.in / 32; ++blk) {   // L32: v0 holds the first halves
        const u8* bp = row.row + (2 * c + blk) * LegacyRow<FMT>::BYTES;
        const __m512 d = _mm512_set1_ps(h2f(bp));
        for (int h = 0; h < 2; ++h) {
          __m512 y = _mm512_mul_ps(half_words(h ? v1 : v0, blk), d);
          if (MIN) y = _mm512_add_ps(y, _mm512_set1_ps(h2f(bp + 2)));
          store16(y, out, base + 64 * c + 32 * blk + 16 * h, ot);
        }
      }
    }
  }
}

}  // namespace

namespace hfq_cpu::HFQ_DEQUANT_NS {
void dequant(const Weight& W, int64_t r0, int64_t r1, void* out, int ot) {
  switch (W.fmt) {
    case FMT_Q4_0: return dequant_legacy<FMT_Q4_0>(W, r0, r1, out, ot);
    case FMT_Q4_1: return dequant_legacy<FMT_Q4_1>(W, r0, r1, out, ot);
    case FMT_Q5_0: return dequant_legacy<FMT_Q5_0>(W, r0, r1, out, ot);
    case FMT_Q5_1: return dequant_legacy<FMT_Q5_1>(W, r0, r1, out, ot);
    case FMT_Q8_0: return dequant_legacy<FMT_Q8_0>(W, r0, r1, out, ot);
    case FMT_Q2_K: return dequant_k<FMT_Q2_K>(W, r0, r1, out, ot);
    case FMT_Q3_K: return dequant_k<FMT_Q3_K>(W, r0, r1, out, ot);
    case FMT_Q4_K: return dequant_k<FMT_Q4_K>(W, r0, r1, out, ot);
    case FMT_Q5_K: return dequant_k<FMT_Q5_K>(W, r0, r1, out, ot);
    case FMT_Q6_K: return dequant_k<FMT_Q6_K>(W, r0, r1, out, ot);
    default: break;
  }
  const bool int_fast = W.fmt == FMT_INT && !W.g_idx && (W.bits == 4 || W.bits == 8) && W.group % 32 == 0;
  const bool lut_fast = W.fmt == FMT_LUT4 && W.in % 32 == 0 && W.group >= 32;
  if (!int_fast && !lut_fast) return dequant_rows(W, r0, r1, out, ot);
  const __m512i m4 = _mm512_set1_epi32(0xF);
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t base = (r - r0) * W.in;
    if (lut_fast) {
      const __m512 lut = _mm512_loadu_ps(W.lut);
      for (int64_t k = 0; k < W.in; k += 32) {
        const int64_t f = r * W.in + k;
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(W.w + f / 2)));
        const __m512 a = _mm512_set1_ps(W.absmax[f / W.group]);
        __m512 y0, y1;   // the first code of a byte is in its high nibble
        pairs(_mm512_mul_ps(_mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), lut), a),
              _mm512_mul_ps(_mm512_permutexvar_ps(_mm512_and_si512(b, m4), lut), a), y0, y1);
        store16(y0, out, base + k, ot);
        store16(y1, out, base + k + 16, ot);
      }
      continue;
    }
    const u8* row = W.w + r * W.row_bytes;
    const uint16_t* sc = W.scales + r * (W.in / W.group);
    const u8* zp = W.zeros ? W.zeros + r * (W.in / W.group) : nullptr;
    for (int64_t k = 0; k < W.in; k += 32) {
      const int64_t g = k / W.group;
      const __m512 s = _mm512_set1_ps(h2f(sc[g]));
      const __m512 z = _mm512_set1_ps(zp ? (float)zp[g] : (float)(1 << (W.bits - 1)));
      if (W.bits == 4) {
        const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + k / 2)));
        __m512 y0, y1;
        pairs(_mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_and_si512(b, m4)), z), s),
              _mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32(b, 4)), z), s), y0, y1);
        store16(y0, out, base + k, ot);
        store16(y1, out, base + k + 16, ot);
      } else {
        for (int h = 0; h < 2; ++h) {
          const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i*)(row + k + 16 * h)));
          store16(_mm512_mul_ps(_mm512_sub_ps(_mm512_cvtepi32_ps(b), z), s), out, base + k + 16 * h, ot);
        }
      }
    }
  }
}

}  // namespace hfq_cpu::HFQ_DEQUANT_NS
