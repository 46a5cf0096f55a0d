// AVX-512 exact dequantization (avx512_dequant.h) with AVX512_BF16's vcvtneps2bf16 for bfloat16 tiles.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,avx512bf16,fma,f16c,bmi,bmi2")
#define HFQ_DEQUANT_NS avx512bf16
#define HFQ_DEQUANT_BF16 1
#include "avx512_dequant.h"
