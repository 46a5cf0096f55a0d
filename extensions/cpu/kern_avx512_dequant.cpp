// AVX-512 exact dequantization (avx512_dequant.h), bfloat16 rounded in integer steps: CPUs without AVX512_BF16.
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512dq,avx512vbmi,avx512vnni,fma,f16c,bmi,bmi2")
#define HFQ_DEQUANT_NS avx512
#define HFQ_DEQUANT_BF16 0
#include "avx512_dequant.h"
