// The plain interface between ops_cpu.cpp (torch bindings, threads) and the per-instruction-set kernels
// (kern_scalar.cpp, kern_avx2.cpp, kern_avx512.cpp). The kernel units include no torch header: each is compiled
// for its own instruction set, and an inline function shared with torch code could otherwise be linked in its
// AVX-512 form on a CPU without AVX-512.
#pragma once

#include <cstdint>
#include <type_traits>   // decode.h's row_tiles, included inside the units' anonymous namespaces

namespace hfq_cpu {

// Storage formats (hfq/formats/layouts.py). The GGML ids follow hfq/formats/ggml_types.py's order.
enum Fmt : int {
  FMT_INT = 0,   // b-bit codes, little-endian bitstream per row; w = scale * (q - zero) per group
  FMT_LUT4 = 1,  // nf4/fp4: 4-bit codes over the flattened weight, first code in the high nibble; w = lut[q] * absmax
  FMT_Q4_0, FMT_Q4_1, FMT_Q5_0, FMT_Q5_1, FMT_Q8_0, FMT_Q2_K, FMT_Q3_K, FMT_Q4_K, FMT_Q5_K, FMT_Q6_K,
  FMT_COUNT
};

enum OutType : int { OUT_F32 = 0, OUT_BF16 = 1, OUT_F16 = 2 };

struct Weight {
  int fmt;
  int bits;             // FMT_INT: 2..8
  int64_t group;        // FMT_INT: group size (in_features for per-channel); FMT_LUT4: block size
  int64_t in, out;
  const uint8_t* w;     // packed bytes
  int64_t row_bytes;    // FMT_INT and GGML: bytes per row (FMT_LUT4 rows are not byte-aligned in general)
  const uint16_t* scales;  // FMT_INT: float16 [out, in/group]
  const uint8_t* zeros;    // FMT_INT asymmetric: [out, in/group]; null: zero = 2^(bits-1)
  const int32_t* g_idx;    // FMT_INT act-order (dequantize only): group of each column
  const float* absmax;     // FMT_LUT4: float32 per block
  float lut[16];           // FMT_LUT4: the code table
};

// Activations prepared once per call for the integer engine (kern_avx512.cpp): for each row of x, per 64-column
// chunk, 64 int16 values in the format's slot order and the chunk's scale (shared by the chunks of one
// quantization block), plus float32 sums of every 16 natural columns for the minimum terms.
struct Acts {
  int m;                 // rows of x
  int64_t k;             // columns (in_features)
  int64_t chunks;        // ceil(k / 64)
  const float* x;        // [m, k] float32, natural order (generic engine)
  int16_t* q;            // [m, chunks, 64]
  float* d;              // [m, chunks]
  float* s16;            // [m, chunks, 32]: sums of x per 16 columns (4 used), or an engine's own (kern_avx512_*.cpp)
  bool int8;             // GGML types: int8 per 256 (k-quants) or 32 columns, as llama.cpp (opt-in, HFQ_CPU_ACTIVATIONS=int8)
};

struct Kernels {
  const char* isa;
  // Exact dequantization of rows [r0, r1) into out (row r at out + (r - r0) * in), bit for bit as the pure-torch
  // reference: float32 math in ggml's/the reference's order, then round to nearest even into the output type.
  void (*dequant)(const Weight& w, int64_t r0, int64_t r1, void* out, int out_type);
  // Whether gemv can take the integer engine for this weight (else the generic float path is used).
  bool (*fast)(const Weight& w);
  // Fill the int16 part of acts for this weight's format (acts.x, m, k, chunks set; buffers allocated).
  void (*prep)(const Weight& w, Acts& a);
  // y[m, r] = sum_k x[m, k] * w[r, k] for rows [r0, r1); y is float32 with row stride w.out.
  void (*gemv)(const Weight& w, const Acts& a, int64_t r0, int64_t r1, float* y);
};

extern const Kernels kernels_scalar;
extern const Kernels kernels_avx2;
extern const Kernels kernels_avx512;
extern const Kernels kernels_avx512bf16;

}  // namespace hfq_cpu
