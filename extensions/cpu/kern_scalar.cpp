// Portable kernels: the exact decoders and the generic engine, compiled for the baseline instruction set.
#include <cstdint>
#include <cstring>

#include "qlinear.h"

namespace {
#include "decode.h"

float dot(const float* a, const float* b, int64_t n) {
  float s[4] = {0, 0, 0, 0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    for (int j = 0; j < 4; ++j) s[j] += a[i + j] * b[i + j];
  for (; i < n; ++i) s[0] += a[i] * b[i];
  return (s[0] + s[1]) + (s[2] + s[3]);
}

bool never(const hfq_cpu::Weight&) { return false; }
void no_prep(const hfq_cpu::Weight&, hfq_cpu::Acts&) {}

}  // namespace

namespace hfq_cpu {
const Kernels kernels_scalar = {"scalar", dequant_rows, never, no_prep, gemv_generic<dot>};
}
