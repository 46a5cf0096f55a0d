// Entry points shared between the AVX-512 units (each compiled for AVX-512; called only from kernels_avx512*).
#pragma once

#include <cstdint>

#include "qlinear.h"

namespace hfq_cpu::avx512 {
void dequant(const Weight& w, int64_t r0, int64_t r1, void* out, int out_type);
// k-quants, int8 activations or int16 ones as two byte planes (kern_avx512_k8.cpp)
bool k8(const Weight& w, const Acts& a);
void prep_k8(const Weight& w, Acts& a);
void gemv_k8(const Weight& w, const Acts& a, int64_t r0, int64_t r1, float* y);
// the 32-column GGML blocks with int8 activations (kern_avx512_q8.cpp)
bool q8(const Weight& w, const Acts& a);
void prep_q8(const Weight& w, Acts& a);
void gemv_q8(const Weight& w, const Acts& a, int64_t r0, int64_t r1, float* y);
// 4-bit integer codes on bytes, int16 activations as two byte planes (kern_avx512_b4.cpp)
bool b4(const Weight& w, const Acts& a);
void prep_b4(const Weight& w, Acts& a);
void gemv_b4(const Weight& w, const Acts& a, int64_t r0, int64_t r1, float* y);
}  // namespace hfq_cpu::avx512

namespace hfq_cpu::avx512bf16 {   // the same dequantization, bfloat16 by vcvtneps2bf16 (kern_avx512bf16_dequant.cpp)
void dequant(const Weight& w, int64_t r0, int64_t r1, void* out, int out_type);
}
