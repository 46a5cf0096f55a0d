// AVX-512 GEMV for the 32-column GGML blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) with int8 activations, as llama.cpp
// computes them (its Q8_0/Q8_1 activations): x is quantized once per call to int8 per 32 columns
// (scale = max|x| / 127), codes stay unsigned bytes (Q8_0's signed codes biased by 128), and vpdpbusd takes two
// blocks per instruction into int32. The offset (8, 16 or the bias 128) and Q4_1/Q5_1's minimum go through the
// sums of the quantized x, so y = sum w * x~ exactly up to float32 rounding, with x~ the int8 x: the error per
// element of x is at most 1/254 of its block's largest |x|. Opt-in with the k-quant engine
// (HFQ_CPU_ACTIVATIONS=int8, docs/kernels.md). With int16 activations (the default) Q4_0..Q5_1 take the same engine
// on two byte planes of x per 32 columns (x16 = 256 hi + lo, scale max|x| / 32639; 128 bytes per chunk), joined in
// int32 before the float conversion: the int16 engine's precision.
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

// Activations, per row of x: the int8 x in Acts::q (64 bytes per 64-column chunk, zero past k); in Acts::s16 (32
// floats per chunk) the scale of each 32-column block, then d * sum(q) of each block (zeros past the last block).
// The 4- and 5-bit types take each chunk's two blocks A, B as [A 0..15, B 0..15, A 16..31, B 16..31], the order
// in which their nibbles unpack with no shuffle across blocks; Q8_0 keeps the natural order.
template <int FMT>
struct Blk {
  static constexpr int BYTES = ggml_block_bytes(FMT);
  static constexpr bool MIN = FMT == FMT_Q4_1 || FMT == FMT_Q5_1;
  static constexpr float OFF = FMT == FMT_Q4_0 ? 8.f : FMT == FMT_Q5_0 ? 16.f : FMT == FMT_Q8_0 ? 128.f : 0.f;
  static constexpr int QS = FMT == FMT_Q4_0 ? 2 : FMT == FMT_Q4_1 ? 4 : FMT == FMT_Q5_0 ? 6 : FMT == FMT_Q5_1 ? 8 : 2;
  // The unsigned codes of blocks a and b (b null: zeros) in the chunk order above.
  static HFQ_INLINE __m512i codes(const u8* a, const u8* b) {
    if (FMT == FMT_Q8_0) {   // signed codes biased by 128
      const __m256i z = _mm256_setzero_si256();
      const __m512i q = _mm512_inserti64x4(_mm512_castsi256_si512(_mm256_loadu_si256((const __m256i*)(a + QS))),
                                           b ? _mm256_loadu_si256((const __m256i*)(b + QS)) : z, 1);
      return _mm512_xor_si512(q, _mm512_set1_epi8((char)0x80));
    }
    const __m128i qb = b ? _mm_loadu_si128((const __m128i*)(b + QS)) : _mm_setzero_si128();
    const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)(a + QS))), qb, 1);
    __m512i q = _mm512_and_si512(_mm512_inserti64x4(_mm512_castsi256_si512(v), _mm256_srli_epi16(v, 4), 1),
                                 _mm512_set1_epi8(0xF));
    if (FMT == FMT_Q5_0 || FMT == FMT_Q5_1) {   // bit j of qh is the fifth bit of column j
      const int at = FMT == FMT_Q5_0 ? 2 : 4;
      const uint64_t ha = load_u32(a + at), hb = b ? load_u32(b + at) : 0;
      const uint64_t k = (ha & 0xFFFF) | (hb & 0xFFFF) << 16 | (ha >> 16) << 32 | (hb >> 16) << 48;
      q = _mm512_or_si512(q, _mm512_maskz_set1_epi8((__mmask64)k, 0x10));
    }
    return q;
  }
};

// Scales (and Q4_1/Q5_1's minimums, else -offset * scale) of up to 16 blocks from b on, as float32 lanes: one
// gather of each block's first four bytes, so no block pays a scalar half conversion.
template <int FMT>
HFQ_INLINE void scales16(const u8* b, __mmask16 mk, __m512& d, __m512& o) {
  using B = Blk<FMT>;
  const __m512i off = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                         _mm512_set1_epi32(B::BYTES));
  const __m512i g = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), mk, off, b, 1);
  d = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(g));
  o = B::MIN ? _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32(g, 16))) : _mm512_mul_ps(d, _mm512_set1_ps(-B::OFF));
}

template <int FMT, int MT, int P>   // P: byte planes of x (1: int8, 2: int16 as hi and lo)
HFQ_INLINE void q8_row(const Weight& W, const Acts& a, int m0, int64_t r, float* y, const char* pf) {
  using B = Blk<FMT>;
  const u8* row = W.w + r * W.row_bytes;
  const int64_t nb = W.in / 32, cs = a.chunks;
  __m512 f[MT], f2[MT], fo[MT];
  for (int m = 0; m < MT; ++m) f[m] = f2[m] = fo[m] = _mm512_setzero_ps();
  // Block of each int32 lane of vpdpbusd (four bytes each) in the chunk order.
  const __m512i pair0 = FMT == FMT_Q8_0 ? _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1)
                                        : _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1);
  const __m512i two = _mm512_set1_epi32(2);
  for (int64_t c0 = 0; c0 < cs; c0 += 8) {   // 16 blocks share one gather of their scales
    const int64_t n = nb - 2 * c0;
    const __mmask16 mk = n >= 16 ? 0xFFFF : (__mmask16)((1u << n) - 1);
    __m512 d16, o16, wx[MT];
    scales16<FMT>(row + 2 * c0 * B::BYTES, mk, d16, o16);
    for (int m = 0; m < MT; ++m) {
      const float* s = a.s16 + (m0 + m) * cs * 32;
      wx[m] = _mm512_mul_ps(d16, _mm512_maskz_loadu_ps(mk, s + 2 * c0));
      fo[m] = _mm512_fmadd_ps(o16, _mm512_maskz_loadu_ps(mk, s + 2 * cs + 2 * c0), fo[m]);
    }
    __m512i idx = pair0;
    const int64_t c1 = c0 + 8 < cs ? c0 + 8 : cs;
    auto chunk = [&](int64_t c, __m512* acc) __attribute__((always_inline)) {
      const u8* ba = row + 2 * c * B::BYTES;
      _mm_prefetch(pf + 2 * c * B::BYTES, _MM_HINT_T0);
      const __m512i q = B::codes(ba, 2 * c + 1 < nb ? ba + B::BYTES : nullptr);
      for (int m = 0; m < MT; ++m) {
        const int8_t* xq = reinterpret_cast<const int8_t*>(a.q) + ((m0 + m) * cs + c) * 64 * P;
        __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(xq));
        if (P == 2)   // lanes: 4 products of 31 * 127 at most, times 256, plus the low plane's
          p = _mm512_add_epi32(_mm512_slli_epi32(p, 8),
                               _mm512_dpbusd_epi32(_mm512_setzero_si512(), q, _mm512_loadu_si512(xq + 64)));
        acc[m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(idx, wx[m]), acc[m]);
      }
      idx = _mm512_add_epi32(idx, two);
    };
    int64_t c = c0;   // even and odd chunks into their own sums: one multiply-add chain would wait on its latency
    for (; c + 2 <= c1; c += 2) { chunk(c, f); chunk(c + 1, f2); }
    if (c < c1) chunk(c, f);
  }
  for (int m = 0; m < MT; ++m) y[(m0 + m) * W.out + r] = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(f[m], f2[m]), fo[m]));
}

template <int FMT, int P>
void run_q8(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  const char* end = (const char*)(W.w + r1 * W.row_bytes);
  for (int64_t r = r0; r < r1; ++r) {
    const char* pf = prefetch_start(W.w, r, W.row_bytes, end);
    row_tiles(a.m, [&](auto mt, int m0) { q8_row<FMT, decltype(mt)::value, P>(W, a, m0, r, y, pf); });
  }
}

}  // namespace

namespace hfq_cpu::avx512 {

// Q8_0 with int16 x stays on the int16 engine: its codes are already bytes there, and biased codes would gain
// nothing (measured: the int8 engine itself is no faster on Q8_0).
bool q8(const Weight& W, const Acts& a) {
  return W.fmt >= FMT_Q4_0 && (a.int8 ? W.fmt <= FMT_Q8_0 : W.fmt <= FMT_Q5_1);
}

void prep_q8(const Weight& W, Acts& a) {
  const bool split = W.fmt != FMT_Q8_0;
  const int P = a.int8 ? 1 : 2;
  const float top = a.int8 ? 127.f : kPlaneLevels;
  for (int m = 0; m < a.m; ++m) {
    const float* x = a.x + m * a.k;
    float* ds = a.s16 + m * a.chunks * 32;
    for (int64_t c = 0; c < a.chunks; ++c) {
      int8_t* q = reinterpret_cast<int8_t*>(a.q) + (m * a.chunks + c) * 64 * P;
      for (int h = 0; h < 2; ++h) {   // the two 32-column blocks of this chunk (zeros past k)
        const int64_t k0 = 64 * c + 32 * h, n = a.k - k0;
        const __mmask16 m0 = n >= 16 ? 0xFFFF : n <= 0 ? 0 : (__mmask16)((1u << n) - 1);
        const __mmask16 m1 = n >= 32 ? 0xFFFF : n <= 16 ? 0 : (__mmask16)((1u << (n - 16)) - 1);
        const __m512 v0 = _mm512_maskz_loadu_ps(m0, x + (n > 0 ? k0 : 0));
        const __m512 v1 = _mm512_maskz_loadu_ps(m1, x + (n > 16 ? k0 + 16 : 0));
        const float mx = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(v0), _mm512_abs_ps(v1)));
        const float total = _mm512_reduce_add_ps(_mm512_add_ps(v0, v1));
        const bool finite = total - total == 0.f;   // a nan or inf in x must reach y, as in the reference
        const float d = finite ? mx / top : __builtin_nanf("");
        const __m512 iv = _mm512_set1_ps(mx > 0 && finite ? top / mx : 0.f);
        const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(v0, iv)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(v1, iv));
        const int at0 = split ? 16 * h : 32 * h, at1 = split ? 32 + 16 * h : 32 * h + 16;
        if (P == 1) {
          _mm_storeu_si128((__m128i*)(q + at0), _mm512_cvtsepi32_epi8(q0));
          _mm_storeu_si128((__m128i*)(q + at1), _mm512_cvtsepi32_epi8(q1));
        } else {   // two planes, 64 bytes apart
          const __m512i h0 = plane_hi(q0), h1 = plane_hi(q1);
          _mm_storeu_si128((__m128i*)(q + at0), _mm512_cvtepi32_epi8(h0));
          _mm_storeu_si128((__m128i*)(q + at1), _mm512_cvtepi32_epi8(h1));
          _mm_storeu_si128((__m128i*)(q + 64 + at0), _mm512_cvtepi32_epi8(_mm512_sub_epi32(q0, _mm512_slli_epi32(h0, 8))));
          _mm_storeu_si128((__m128i*)(q + 64 + at1), _mm512_cvtepi32_epi8(_mm512_sub_epi32(q1, _mm512_slli_epi32(h1, 8))));
        }
        ds[2 * c + h] = n > 0 ? d : 0.f;
        ds[2 * a.chunks + 2 * c + h] = n > 0 ? d * (float)_mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1)) : 0.f;
      }
    }
  }
}

template <int P>
void gemv_planes(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  switch (W.fmt) {
    case FMT_Q4_0: return run_q8<FMT_Q4_0, P>(W, a, r0, r1, y);
    case FMT_Q4_1: return run_q8<FMT_Q4_1, P>(W, a, r0, r1, y);
    case FMT_Q5_0: return run_q8<FMT_Q5_0, P>(W, a, r0, r1, y);
    case FMT_Q5_1: return run_q8<FMT_Q5_1, P>(W, a, r0, r1, y);
    default: return run_q8<FMT_Q8_0, P>(W, a, r0, r1, y);
  }
}

void gemv_q8(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  return a.int8 ? gemv_planes<1>(W, a, r0, r1, y) : gemv_planes<2>(W, a, r0, r1, y);
}

}  // namespace hfq_cpu::avx512
