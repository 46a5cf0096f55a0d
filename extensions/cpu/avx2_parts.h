// Entry points shared between the AVX2 units (each compiled for AVX2; called only from kernels_avx2).
#pragma once

#include "qlinear.h"

namespace hfq_cpu::avx2 {
// k-quants on bytes, int16 activations as two byte planes or int8 (kern_avx2_kq.cpp)
bool kq(const Weight& w);
void prep_kq(const Weight& w, Acts& a);
void gemv_kq(const Weight& w, const Acts& a, int64_t r0, int64_t r1, float* y);
// 4-bit integer codes on bytes, int16 activations as two byte planes (kern_avx2_b4.cpp)
bool b4(const Weight& w);
void prep_b4(const Weight& w, Acts& a);
void gemv_b4(const Weight& w, const Acts& a, int64_t r0, int64_t r1, float* y);
}  // namespace hfq_cpu::avx2
