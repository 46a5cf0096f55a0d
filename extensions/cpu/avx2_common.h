// Helpers shared by the AVX2 units (included inside their anonymous namespace, after their target pragma and
// decode.h), so each unit compiles its own copy for its instruction set.
#pragma once

HFQ_INLINE float h2f(const u8* p) { uint16_t h; std::memcpy(&h, p, 2); return _cvtsh_ss(h); }

HFQ_INLINE float hsum(__m256 v) {
  __m128 h = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  h = _mm_add_ps(h, _mm_movehl_ps(h, h));
  return _mm_cvtss_f32(_mm_add_ss(h, _mm_movehdup_ps(h)));
}
