// AVX2+FMA kernels: the exact decoders (auto-vectorized for AVX2) and the generic engine with an FMA dot.
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#include "qlinear.h"

namespace {
#include "decode.h"

float dot(const float* a, const float* b, int64_t n) {
  __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
    s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
  }
  s0 = _mm256_add_ps(s0, s1);
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(s0), _mm256_extractf128_ps(s0, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  h = _mm_add_ss(h, _mm_movehdup_ps(h));
  float s = _mm_cvtss_f32(h);
  for (; i < n; ++i) s += a[i] * b[i];
  return s;
}

bool never(const hfq_cpu::Weight&) { return false; }
void no_prep(const hfq_cpu::Weight&, hfq_cpu::Acts&) {}

}  // namespace

namespace hfq_cpu {
const Kernels kernels_avx2 = {"avx2", dequant_rows, never, no_prep, gemv_generic<dot>};
}
