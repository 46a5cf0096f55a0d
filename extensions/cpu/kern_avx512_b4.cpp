// AVX-512 GEMV for 4-bit integer codes (FMT_INT, bits 4: RTN/GPTQ/AWQ int4) on bytes. x is quantized once per call
// to int16 (scale = max|x| / 32639) per block of the weight's group (64 to 256 columns), as the int16 engine
// (kern_avx512.cpp) does, and stored as two signed byte planes, x16 = 256 hi + lo. A 128-column unit of a row is
// 64 bytes: their low nibbles are the even columns and their high nibbles the odd ones, so a mask and a shift give
// two vectors of unsigned codes, and vpdpbusd multiplies them with the even and odd columns of each plane into
// int32 (lane l: columns 8l..8l+7 of the unit). The zero point comes off in integers per lane (z times the lane's
// sum of the quantized x), so y is the int16 engine's sum of (q - z) x~, exact up to float32 rounding.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,fma,f16c,bmi,bmi2")
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "avx512_parts.h"
#include "qlinear.h"

namespace {
#include "decode.h"

using namespace hfq_cpu;

#include "avx512_rows.h"

// Columns per x block: the group up to 256; per-channel rows 256; groups of 32 and 64 take blocks of 64.
inline int64_t xblock(const Weight& W) {
  return W.group == W.in || W.group >= 256 ? 256 : W.group < 64 ? 64 : W.group;
}

// Activations, per row of x, per unit u (128 columns): 256 bytes of Acts::q, [hi even | hi odd | lo even | lo odd]
// (64 each); Acts::d per 64-column chunk; in Acts::s16 (32 floats per chunk) at the first chunk of each x block,
// 16 int32: lane l's sum of the quantized x over the block's units (columns 8l..8l+7 of each), or for groups of 32
// and 64 the sums of each unit.
template <int MT>
inline void b4_row(const Weight& W, const Acts& a, int m0, int64_t r, float* y, const char* pf) {
  const int64_t units = W.in / 128, G = W.in / W.group, cs = a.chunks;
  const int64_t upb = xblock(W) >= 128 ? xblock(W) / 128 : 1;   // units per x block
  const u8* row = W.w + r * W.row_bytes;
  const uint16_t* sc = W.scales + r * G;
  const u8* zp = W.zeros ? W.zeros + r * G : nullptr;
  const bool small = W.group < 128 && W.group != W.in;   // groups of 32 or 64: x blocks of 64 columns
  const __m512i gsel = _mm512_srli_epi32(_mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
      13, 14, 15), _mm512_set1_epi32(small ? (int)(128 / W.group) : 0)), 4);   // lane -> group within the unit
  const __m512i m4 = _mm512_set1_epi8(0xF);
  __m512 f[MT];
  __m512i acc[MT];
  for (int m = 0; m < MT; ++m) { f[m] = _mm512_setzero_ps(); acc[m] = _mm512_setzero_si512(); }
  int64_t ub = 0;   // first unit of the current x block
  for (int64_t u = 0; u < units; ++u) {
    _mm_prefetch(pf + 64 * u, _MM_HINT_T0);
    const __m512i c = _mm512_loadu_si512(row + 64 * u);
    const __m512i lo = _mm512_and_si512(c, m4), hi = _mm512_and_si512(_mm512_srli_epi16(c, 4), m4);
    for (int m = 0; m < MT; ++m) {
      const __m512i* xq = (const __m512i*)((const int8_t*)(a.q + ((m0 + m) * cs + 2 * u) * 64));
      const __m512i ph = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xq)),
                                             hi, _mm512_loadu_si512(xq + 1));
      const __m512i pl = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, _mm512_loadu_si512(xq + 2)),
                                             hi, _mm512_loadu_si512(xq + 3));
      acc[m] = _mm512_add_epi32(acc[m], _mm512_add_epi32(_mm512_slli_epi32(ph, 8), pl));
    }
    if (u + 1 - ub < upb && u + 1 < units) continue;
    // End of an x block: take the zero point off in integers, then one float conversion and scale.
    const int64_t c0 = 2 * ub;
    ub = u + 1;
    __m512i z;
    __m512 s;
    if (small) {   // groups of 32 or 64: lane l is group 4u + l / 4 or 2u + l / 8
      const bool four = W.group == 32;
      const int64_t g = four ? 4 * u : 2 * u;
      uint32_t zb = 0x08080808u;
      uint64_t h = 0;
      if (four) {
        if (zp) std::memcpy(&zb, zp + g, 4);
        std::memcpy(&h, sc + g, 8);
      } else {
        if (zp) { uint16_t t; std::memcpy(&t, zp + g, 2); zb = t; }
        uint32_t t;
        std::memcpy(&t, sc + g, 4);
        h = t;
      }
      z = _mm512_permutexvar_epi32(gsel, _mm512_castsi128_si512(_mm_cvtepu8_epi32(_mm_cvtsi32_si128((int)zb))));
      s = _mm512_permutexvar_ps(gsel, _mm512_castps128_ps512(_mm_cvtph_ps(_mm_cvtsi64_si128((long long)h))));
    } else {
      const int64_t g = G == 1 ? 0 : 128 * u / W.group;
      z = _mm512_set1_epi32(zp ? zp[g] : 8);
      s = _mm512_set1_ps(h2f(sc[g]));
    }
    for (int m = 0; m < MT; ++m) {
      const int64_t i = (m0 + m) * cs + c0;
      const __m512i sx = _mm512_loadu_si512(a.s16 + i * 32);
      const __m512 d = small ? _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a.d[i]), _mm512_set1_ps(a.d[i + 1]))
                           : _mm512_set1_ps(a.d[i]);
      // Lanes stay below 2^24 (15 * 32639 * 16 columns per 256-column block): the conversion is exact.
      const __m512i t = _mm512_sub_epi32(acc[m], _mm512_mullo_epi32(z, sx));
      f[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(t), _mm512_mul_ps(s, d), f[m]);
      acc[m] = _mm512_setzero_si512();
    }
  }
  for (int m = 0; m < MT; ++m) y[(m0 + m) * W.out + r] = _mm512_reduce_add_ps(f[m]);
}

}  // namespace

namespace hfq_cpu::avx512 {

bool b4(const Weight& W, const Acts&) {
  return W.fmt == FMT_INT && W.bits == 4 && !W.g_idx && W.in % 128 == 0 &&
         (W.group == W.in || (W.group >= 32 && (W.group & (W.group - 1)) == 0));
}

void prep_b4(const Weight& W, Acts& a) {
  const int64_t xb = xblock(W);
  // 16 columns -> their 8 even columns' bytes, then the 8 odd ones'
  const __m128i eo = _mm_setr_epi8(0, 2, 4, 6, 8, 10, 12, 14, 1, 3, 5, 7, 9, 11, 13, 15);
  for (int m = 0; m < a.m; ++m) {
    const float* x = a.x + m * a.k;
    int8_t* q = reinterpret_cast<int8_t*>(a.q + m * a.chunks * 64);
    for (int64_t k0 = 0; k0 < a.k; k0 += xb) {
      const int64_t k1 = k0 + xb < a.k ? k0 + xb : a.k;   // per-channel rows may end on half a block
      __m512 amax = _mm512_setzero_ps(), sum = _mm512_setzero_ps();
      for (int64_t k = k0; k < k1; k += 16) {
        const __m512 v = _mm512_loadu_ps(x + k);
        amax = _mm512_max_ps(amax, _mm512_abs_ps(v));
        sum = _mm512_add_ps(sum, v);
      }
      const float mx = _mm512_reduce_max_ps(amax), total = _mm512_reduce_add_ps(sum);
      const bool finite = total - total == 0.f;   // a nan or inf in x must reach y, as in the reference
      const float d = finite ? mx / kPlaneLevels : __builtin_nanf("");
      const __m512 iv = _mm512_set1_ps(mx > 0 && finite ? kPlaneLevels / mx : 0.f);
      for (int64_t c = k0 / 64; c < k1 / 64; ++c) a.d[m * a.chunks + c] = d;
      // Lane sums: over the block's units, or per unit for blocks of 64 (two per unit)
      int32_t* sx = reinterpret_cast<int32_t*>(a.s16 + (m * a.chunks + (k0 - k0 % 128) / 64) * 32);
      if (k0 % 128 == 0) std::memset(sx, 0, 64);
      for (int64_t k = k0; k < k1; k += 16) {
        const __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(_mm512_loadu_ps(x + k), iv));
        const __m512i hv = plane_hi(v);
        const __m128i h8 = _mm_shuffle_epi8(_mm512_cvtepi32_epi8(hv), eo);
        const __m128i l8 = _mm_shuffle_epi8(_mm512_cvtepi32_epi8(_mm512_sub_epi32(v, _mm512_slli_epi32(hv, 8))), eo);
        const int64_t u = k / 128, j = (k % 128) / 2;   // bytes j..j+7 of the unit's even and odd vectors
        int8_t* qu = q + 256 * u;
        _mm_storel_epi64((__m128i*)(qu + j), h8);
        _mm_storel_epi64((__m128i*)(qu + 64 + j), _mm_unpackhi_epi64(h8, h8));
        _mm_storel_epi64((__m128i*)(qu + 128 + j), l8);
        _mm_storel_epi64((__m128i*)(qu + 192 + j), _mm_unpackhi_epi64(l8, l8));
        const int l = (int)(j / 4);   // columns k..k+15 are lanes l and l + 1 (8 columns each)
        sx[l] += _mm512_mask_reduce_add_epi32(0x00FF, v);
        sx[l + 1] += _mm512_mask_reduce_add_epi32(0xFF00, v);
      }
    }
  }
}

void gemv_b4(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  const char* end = (const char*)(W.w + r1 * W.row_bytes);
  for (int64_t r = r0; r < r1; ++r) {
    const char* pf = prefetch_start(W.w, r, W.row_bytes, end);
    row_tiles(a.m, [&](auto mt, int m0) { b4_row<decltype(mt)::value>(W, a, m0, r, y, pf); });
  }
}

}  // namespace hfq_cpu::avx512
