// AVX2 GEMV for 4-bit integer codes (FMT_INT, bits 4) with groups of 32 and more or per channel, on bytes: the
// design of kern_avx512_b4.cpp without VNNI. x is quantized once per call to int16 (scale = max|x| / 32639) per
// block of the group up to 256 columns and stored as two signed byte planes, x16 = 256 hi + lo, even and odd
// columns apart. A 128-column unit of a row is two 32-byte loads; a mask and a shift give the codes of the even and
// odd columns, vpmaddubsw multiplies them with each plane into int16 (both halves of the unit summed there: at most
// 8 products of 15 * 128), vpmaddwd by 256 and by 1 joins the planes into int32 (lane l: columns 8l..8l+7 of each
// half), and the zero point comes off in integers per lane (z times the lane's sum of the quantized x). Groups of
// 32 and 64 keep the halves apart (their lanes are whole groups: 4 lanes per group of 32), take x per 64 columns,
// and convert and scale each half with a vector of its lanes' group scales.
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

inline int64_t xblock(const Weight& W) {
  return W.group == W.in || W.group >= 256 ? 256 : W.group < 128 ? 64 : W.group;
}

// Activations, per row of x, per 64-column chunk: 128 bytes of Acts::q, [hi even | hi odd | lo even | lo odd] (32
// each); Acts::d per chunk; at the first chunk of each x block, 8 int32 in Acts::s16: lane l's sum of the quantized
// x over columns 8l..8l+7 of every half unit of the block.
template <int MT, int GS>   // GS: 32 or 64 for those groups (halves apart), else 0
inline void b4_row(const Weight& W, const Acts& a, int m0, int64_t r, float* y, const char* pf) {
  const int64_t units = W.in / 128, G = W.in / W.group, cs = a.chunks, upb = xblock(W) / 128;
  const u8* row = W.w + r * W.row_bytes;
  const uint16_t* sc = W.scales + r * G;
  const u8* zp = W.zeros ? W.zeros + r * G : nullptr;
  const __m256i m4 = _mm256_set1_epi8(0xF), k256 = _mm256_set1_epi16(256), k1 = _mm256_set1_epi16(1);
  __m256 f[MT];
  __m256i acc[MT];
  for (int m = 0; m < MT; ++m) { f[m] = _mm256_setzero_ps(); acc[m] = _mm256_setzero_si256(); }
  int64_t ub = 0;   // first unit of the current x block
  // GS: each half's lanes -> their group among the unit's 4 (groups of 32) or 2 (of 64)
  const __m256i lane_group[2] = {GS == 32 ? _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1) : _mm256_setzero_si256(),
                                 GS == 32 ? _mm256_setr_epi32(2, 2, 2, 2, 3, 3, 3, 3) : _mm256_set1_epi32(1)};
  for (int64_t u = 0; u < units; ++u) {
    _mm_prefetch(pf + 64 * u, _MM_HINT_T0);
    const __m256i c0 = _mm256_loadu_si256((const __m256i*)(row + 64 * u));
    const __m256i c1 = _mm256_loadu_si256((const __m256i*)(row + 64 * u + 32));
    const __m256i e0 = _mm256_and_si256(c0, m4), o0 = _mm256_and_si256(_mm256_srli_epi16(c0, 4), m4);
    const __m256i e1 = _mm256_and_si256(c1, m4), o1 = _mm256_and_si256(_mm256_srli_epi16(c1, 4), m4);
    if constexpr (GS != 0) {   // groups of 32 or 64: lanes 0-3 and 4-7 of a half are columns 0-31 and 32-63
      constexpr int per = 128 / GS;   // groups per unit
      const int64_t g0 = per * u;
      int32_t s2 = 0, z2 = 0x08080808;
      __m128i sh;
      if constexpr (per == 4) {
        sh = _mm_loadl_epi64((const __m128i*)(sc + g0));
        if (zp) std::memcpy(&z2, zp + g0, 4);
      } else {
        std::memcpy(&s2, sc + g0, 4);
        sh = _mm_cvtsi32_si128(s2);
        if (zp) std::memcpy(&z2, zp + g0, 2);
      }
      const __m256 sg = _mm256_castps128_ps256(_mm_cvtph_ps(sh));
      const __m256i zg = _mm256_castsi128_si256(_mm_cvtepu8_epi32(_mm_cvtsi32_si128(z2)));
      const __m256 sv[2] = {_mm256_permutevar8x32_ps(sg, lane_group[0]), _mm256_permutevar8x32_ps(sg, lane_group[1])};
      const __m256i zv[2] = {_mm256_permutevar8x32_epi32(zg, lane_group[0]),
                             _mm256_permutevar8x32_epi32(zg, lane_group[1])};
      for (int m = 0; m < MT; ++m) {
        const __m256i* x = (const __m256i*)(a.q + ((m0 + m) * cs + 2 * u) * 64);
        auto half = [&](__m256i e, __m256i o, const __m256i* p) __attribute__((always_inline)) {
          return _mm256_add_epi16(_mm256_maddubs_epi16(e, _mm256_loadu_si256(p)),
                                  _mm256_maddubs_epi16(o, _mm256_loadu_si256(p + 1)));
        };
        const __m256i t0 = _mm256_add_epi32(_mm256_madd_epi16(half(e0, o0, x), k256),
                                            _mm256_madd_epi16(half(e0, o0, x + 2), k1));
        const __m256i t1 = _mm256_add_epi32(_mm256_madd_epi16(half(e1, o1, x + 4), k256),
                                            _mm256_madd_epi16(half(e1, o1, x + 6), k1));
        for (int h = 0; h < 2; ++h) {   // lanes below 2^24 (15 * 32639 * 8 columns): exact conversion
          const int64_t i = (m0 + m) * cs + 2 * u + h;
          const __m256i sx = _mm256_loadu_si256((const __m256i*)(a.s16 + i * 32));
          const __m256i t = _mm256_sub_epi32(h ? t1 : t0, _mm256_mullo_epi32(zv[h], sx));
          f[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_mul_ps(sv[h], _mm256_set1_ps(a.d[i])), f[m]);
        }
      }
      continue;
    }
    for (int m = 0; m < MT; ++m) {
      const __m256i* x = (const __m256i*)(a.q + ((m0 + m) * cs + 2 * u) * 64);
      // one plane: the even and odd codes of both halves against its 32-byte runs at p, p + 1, p + 4, p + 5
      auto plane = [&](const __m256i* p) __attribute__((always_inline)) {
        return _mm256_add_epi16(
            _mm256_add_epi16(_mm256_maddubs_epi16(e0, _mm256_loadu_si256(p)), _mm256_maddubs_epi16(o0, _mm256_loadu_si256(p + 1))),
            _mm256_add_epi16(_mm256_maddubs_epi16(e1, _mm256_loadu_si256(p + 4)), _mm256_maddubs_epi16(o1, _mm256_loadu_si256(p + 5))));
      };
      const __m256i th = plane(x), tl = plane(x + 2);
      acc[m] = _mm256_add_epi32(acc[m], _mm256_add_epi32(_mm256_madd_epi16(th, k256), _mm256_madd_epi16(tl, k1)));
    }
    if (u + 1 - ub < upb && u + 1 < units) continue;
    // End of an x block: the zero point off in integers, then one float conversion and scale. Lanes stay below
    // 2^24 (15 * 32639 * 32 columns): the conversion is exact.
    const int64_t c = 2 * ub, g = G == 1 ? 0 : 128 * ub / W.group;
    ub = u + 1;
    const __m256i z = _mm256_set1_epi32(zp ? zp[g] : 8);
    const float s = _cvtsh_ss(sc[g]);
    for (int m = 0; m < MT; ++m) {
      const int64_t i = (m0 + m) * cs + c;
      const __m256i sx = _mm256_loadu_si256((const __m256i*)(a.s16 + i * 32));
      const __m256i t = _mm256_sub_epi32(acc[m], _mm256_mullo_epi32(z, sx));
      f[m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(t), _mm256_set1_ps(s * a.d[i]), f[m]);
      acc[m] = _mm256_setzero_si256();
    }
  }
  for (int m = 0; m < MT; ++m) y[(m0 + m) * W.out + r] = hsum(f[m]);
}

}  // namespace

namespace hfq_cpu::avx2 {

bool b4(const Weight& W) {
  return W.fmt == FMT_INT && W.bits == 4 && !W.g_idx && W.in % 128 == 0 &&
         (W.group == W.in || (W.group >= 32 && (W.group & (W.group - 1)) == 0));
}

void prep_b4(const Weight& W, Acts& a) {
  const int64_t xb = xblock(W);
  for (int m = 0; m < a.m; ++m) {
    const float* x = a.x + m * a.k;
    int8_t* q = reinterpret_cast<int8_t*>(a.q + m * a.chunks * 64);
    for (int64_t k0 = 0; k0 < a.k; k0 += xb) {
      const int64_t k1 = k0 + xb < a.k ? k0 + xb : a.k;   // per-channel rows may end on half a block
      float mx = 0.f, total = 0.f;
      for (int64_t k = k0; k < k1; ++k) { mx = std::fabs(x[k]) > mx ? std::fabs(x[k]) : mx; total += x[k]; }
      const bool finite = total - total == 0.f;   // a nan or inf in x must reach y, as in the reference
      const float d = finite ? mx / kPlaneLevels : __builtin_nanf(""), inv = mx > 0 && finite ? kPlaneLevels / mx : 0.f;
      for (int64_t c = k0 / 64; c < k1 / 64; ++c) a.d[m * a.chunks + c] = d;
      int32_t* sx = reinterpret_cast<int32_t*>(a.s16 + (m * a.chunks + k0 / 64) * 32);
      std::memset(sx, 0, 32);
      for (int64_t k = k0; k < k1; ++k) {
        const int v = (int)__builtin_lrintf(x[k] * inv), h = plane_hi(v);
        const int64_t o = k % 64;
        int8_t* qc = q + 128 * (k / 64) + (o & 1) * 32 + o / 2;   // hi even/odd, then lo 64 bytes on
        qc[0] = (int8_t)h;
        qc[64] = (int8_t)(v - 256 * h);
        sx[o / 8] += v;
      }
    }
  }
}

void gemv_b4(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  const char* end = (const char*)(W.w + r1 * W.row_bytes);
  for (int64_t r = r0; r < r1; ++r) {
    const char* pf = prefetch_start(W.w, r, W.row_bytes, end);
    if (W.group == 32)
      row_tiles(a.m, [&](auto mt, int m0) { b4_row<decltype(mt)::value, 32>(W, a, m0, r, y, pf); });
    else if (W.group == 64)
      row_tiles(a.m, [&](auto mt, int m0) { b4_row<decltype(mt)::value, 64>(W, a, m0, r, y, pf); });
    else
      row_tiles(a.m, [&](auto mt, int m0) { b4_row<decltype(mt)::value, 0>(W, a, m0, r, y, pf); });
  }
}

}  // namespace hfq_cpu::avx2
