// Exact decoders: packed bytes -> float32 weights, in the pure-torch reference's operation order
// (hfq/kernels/reference.py, hfq/formats/ggml_dequant.py). Included by each kernel unit inside its anonymous
// namespace, so every unit compiles its own copy for its instruction set. Needs -ffp-contract=off: a fused
// multiply-add would change the last bit.
#pragma once

#include <cstdint>
#include <cstring>

#include "qlinear.h"

using u8 = uint8_t;

#define HFQ_INLINE inline __attribute__((always_inline))

// Bytes of one GGML block (ggml's type traits), for the decoders and every unit's row unpackers.
constexpr int ggml_block_bytes(int fmt) {
  return fmt == hfq_cpu::FMT_Q4_0 ? 18 : fmt == hfq_cpu::FMT_Q4_1 ? 20 : fmt == hfq_cpu::FMT_Q5_0 ? 22
       : fmt == hfq_cpu::FMT_Q5_1 ? 24 : fmt == hfq_cpu::FMT_Q8_0 ? 34 : fmt == hfq_cpu::FMT_Q2_K ? 84
       : fmt == hfq_cpu::FMT_Q3_K ? 110 : fmt == hfq_cpu::FMT_Q4_K ? 144 : fmt == hfq_cpu::FMT_Q5_K ? 176 : 210;
}

// Where row r's software prefetch starts: 2 KB ahead in the weight stream (rows are contiguous), never past the
// last of this task's rows, which ends at `end`.
HFQ_INLINE const char* prefetch_start(const u8* w, int64_t r, int64_t row_bytes, const char* end) {
  const char* pf = (const char*)(w + r * row_bytes) + 2048;
  return pf + row_bytes > end ? end - row_bytes : pf;
}

// Rows of x in tiles of 4, then the 3, 2 or 1 left: tile(mt, m0), mt a std::integral_constant with the tile's rows.
template <class F>
HFQ_INLINE void row_tiles(int m, F&& tile) {
  int m0 = 0;
  for (; m0 + 4 <= m; m0 += 4) tile(std::integral_constant<int, 4>(), m0);
  switch (m - m0) {
    case 3: tile(std::integral_constant<int, 3>(), m0); break;
    case 2: tile(std::integral_constant<int, 2>(), m0); break;
    case 1: tile(std::integral_constant<int, 1>(), m0); break;
    default: break;
  }
}

// int16 x as two signed byte planes, x = 256 hi + lo (the byte engines): at most 32639 in magnitude, so that the
// high byte (x + 128) >> 8 stays within [-127, 127] and the low one, x - 256 hi, within [-128, 127].
constexpr float kPlaneLevels = 32639.f;
HFQ_INLINE int plane_hi(int v) { return (v + 128) >> 8; }

inline float f32_from_bits(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline uint32_t bits_from_f32(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

// IEEE half -> float, exact (normals, subnormals, inf, nan).
inline float half_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1F, man = h & 0x3FF;
  if (exp == 0x1F) return f32_from_bits(sign | 0x7F800000u | (man << 13));
  if (exp == 0) {
    if (man == 0) return f32_from_bits(sign);
    int e = -1;
    do { man <<= 1; ++e; } while (!(man & 0x400));   // normalize the subnormal
    return f32_from_bits(sign | ((uint32_t)(127 - 15 - e) << 23) | ((man & 0x3FF) << 13));
  }
  return f32_from_bits(sign | ((exp + 112) << 23) | (man << 13));
}
inline float load_half(const u8* p) { uint16_t h; std::memcpy(&h, p, 2); return half_to_f32(h); }

// float -> bfloat16, round to nearest even; NaN becomes the canonical quiet NaN (as c10::BFloat16).
inline uint16_t f32_to_bf16(float f) {
  uint32_t u = bits_from_f32(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  return (uint16_t)((u + 0x7FFFu + ((u >> 16) & 1)) >> 16);
}

// float -> IEEE half, round to nearest even (as c10::Half's fp16_ieee_from_fp32_value).
inline uint16_t f32_to_f16(float f) {
  const uint32_t u = bits_from_f32(f), sign = (u >> 16) & 0x8000, a = u & 0x7FFFFFFFu;
  if (a > 0x7F800000u) return (uint16_t)(sign | 0x7E00);                  // nan
  if (a >= 0x47800000u) return (uint16_t)(sign | 0x7C00);                 // 65536 and up: inf
  if (a < 0x38800000u) {                                                  // half subnormal or zero
    // Add 0.5 as a float: the hardware rounds the mantissa to nearest even at the half-subnormal spacing.
    const float r = f32_from_bits(a) + 0.5f;
    return (uint16_t)(sign | (bits_from_f32(r) - 0x3F000000u));
  }
  const uint32_t mant_odd = (a >> 13) & 1;
  return (uint16_t)(sign | ((a + 0xC8000FFFu + mant_odd) >> 13));
}


// ---- GGML blocks: decode one block into y (32 or 256 floats), ggml's dequantize_row_* order ----

inline void dec_q4_0(const u8* b, float* y) {
  const float d = load_half(b);
  for (int j = 0; j < 16; ++j) {
    y[j] = (float)((b[2 + j] & 0xF) - 8) * d;
    y[j + 16] = (float)((b[2 + j] >> 4) - 8) * d;
  }
}
inline void dec_q4_1(const u8* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = (float)(b[4 + j] & 0xF) * d + m;
    y[j + 16] = (float)(b[4 + j] >> 4) * d + m;
  }
}
inline uint32_t load_u32(const u8* p) { uint32_t v; std::memcpy(&v, p, 4); return v; }
inline void dec_q5_0(const u8* b, float* y) {
  const float d = load_half(b);
  const uint32_t qh = load_u32(b + 2);
  for (int j = 0; j < 16; ++j) {
    y[j] = (float)((int)((b[6 + j] & 0xF) | (((qh >> j) & 1) << 4)) - 16) * d;
    y[j + 16] = (float)((int)((b[6 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) - 16) * d;
  }
}
inline void dec_q5_1(const u8* b, float* y) {
  const float d = load_half(b), m = load_half(b + 2);
  const uint32_t qh = load_u32(b + 4);
  for (int j = 0; j < 16; ++j) {
    y[j] = (float)((b[8 + j] & 0xF) | (((qh >> j) & 1) << 4)) * d + m;
    y[j + 16] = (float)((b[8 + j] >> 4) | (((qh >> (j + 16)) & 1) << 4)) * d + m;
  }
}
inline void dec_q8_0(const u8* b, float* y) {
  const float d = load_half(b);
  for (int j = 0; j < 32; ++j) y[j] = (float)(int8_t)b[2 + j] * d;
}
inline void dec_q2_k(const u8* b, float* y) {
  const u8 *sc = b, *qs = b + 16;
  const float d = load_half(b + 80), dmin = load_half(b + 82);
  for (int e = 0; e < 256; ++e) {
    const int h = e >> 7, k = (e >> 5) & 3, l = e & 31, j = e >> 4;
    const float dl = d * (float)(sc[j] & 0xF), ml = dmin * (float)(sc[j] >> 4);
    y[e] = dl * (float)((qs[32 * h + l] >> (2 * k)) & 3) - ml;
  }
}
inline int q3_scale(const u8* s, int j) {   // 6-bit scale j of a Q3_K block, 0..63
  const int low = j < 8 ? (s[j] & 0xF) : (s[j - 8] >> 4);
  return low | (((s[8 + (j & 3)] >> (2 * (j >> 2))) & 3) << 4);
}
inline void dec_q3_k(const u8* b, float* y) {
  const u8 *hm = b, *qs = b + 32, *s = b + 96;
  const float d = load_half(b + 108);
  for (int e = 0; e < 256; ++e) {
    const int h = e >> 7, k = (e >> 5) & 3, l = e & 31;
    const int q = ((qs[32 * h + l] >> (2 * k)) & 3) | (((hm[e & 31] >> (e >> 5)) & 1) << 2);
    const float dl = d * (float)(q3_scale(s, e >> 4) - 32);
    y[e] = dl * (float)(q - 4);
  }
}
inline void k4_scale_min(const u8* s, int j, int* sc, int* m) {   // Q4_K/Q5_K 6-bit scale and min j (0..7)
  if (j < 4) { *sc = s[j] & 63; *m = s[j + 4] & 63; }
  else { *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4); *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4); }
}
inline void dec_q4_k(const u8* b, float* y) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const u8* qs = b + 16;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    k4_scale_min(b + 4, j, &sc, &m);
    const float dl = d * (float)sc, ml = dmin * (float)m;
    const u8* q = qs + 32 * (j >> 1);
    for (int l = 0; l < 32; ++l) y[32 * j + l] = dl * (float)((j & 1) ? (q[l] >> 4) : (q[l] & 0xF)) - ml;
  }
}
inline void dec_q5_k(const u8* b, float* y) {
  const float d = load_half(b), dmin = load_half(b + 2);
  const u8 *qh = b + 16, *qs = b + 48;
  for (int j = 0; j < 8; ++j) {
    int sc, m;
    k4_scale_min(b + 4, j, &sc, &m);
    const float dl = d * (float)sc, ml = dmin * (float)m;
    const u8* q = qs + 32 * (j >> 1);
    for (int l = 0; l < 32; ++l) {
      const int lo = (j & 1) ? (q[l] >> 4) : (q[l] & 0xF);
      y[32 * j + l] = dl * (float)(lo | (((qh[l] >> j) & 1) << 4)) - ml;
    }
  }
}
inline void dec_q6_k(const u8* b, float* y) {
  const u8 *ql = b, *qh = b + 128;
  const int8_t* sc = reinterpret_cast<const int8_t*>(b + 192);
  const float d = load_half(b + 208);
  for (int e = 0; e < 256; ++e) {
    const int h = e >> 7, nib = (e >> 6) & 1, c = (e >> 5) & 1, l = e & 31;
    const int lo = (ql[64 * h + 32 * c + l] >> (4 * nib)) & 0xF;
    const int hi = (qh[32 * h + l] >> (2 * ((e >> 5) & 3))) & 3;
    const float dl = d * (float)sc[e >> 4];
    y[e] = dl * (float)((lo | (hi << 4)) - 32);
  }
}

struct GgmlInfo { int block, bytes; void (*dec)(const u8*, float*); };
inline GgmlInfo ggml_info(int fmt) {
  switch (fmt) {
    case hfq_cpu::FMT_Q4_0: return {32, ggml_block_bytes(hfq_cpu::FMT_Q4_0), dec_q4_0};
    case hfq_cpu::FMT_Q4_1: return {32, ggml_block_bytes(hfq_cpu::FMT_Q4_1), dec_q4_1};
    case hfq_cpu::FMT_Q5_0: return {32, ggml_block_bytes(hfq_cpu::FMT_Q5_0), dec_q5_0};
    case hfq_cpu::FMT_Q5_1: return {32, ggml_block_bytes(hfq_cpu::FMT_Q5_1), dec_q5_1};
    case hfq_cpu::FMT_Q8_0: return {32, ggml_block_bytes(hfq_cpu::FMT_Q8_0), dec_q8_0};
    case hfq_cpu::FMT_Q2_K: return {256, ggml_block_bytes(hfq_cpu::FMT_Q2_K), dec_q2_k};
    case hfq_cpu::FMT_Q3_K: return {256, ggml_block_bytes(hfq_cpu::FMT_Q3_K), dec_q3_k};
    case hfq_cpu::FMT_Q4_K: return {256, ggml_block_bytes(hfq_cpu::FMT_Q4_K), dec_q4_k};
    case hfq_cpu::FMT_Q5_K: return {256, ggml_block_bytes(hfq_cpu::FMT_Q5_K), dec_q5_k};
    default: return {256, ggml_block_bytes(hfq_cpu::FMT_Q6_K), dec_q6_k};
  }
}

// ---- int and nf4/fp4 ----

inline int int_code(const u8* row, int bits, int64_t k) {   // bits [k*b, k*b+b) of the row's bitstream
  const int64_t bit = k * bits;
  const int byte = (int)(bit >> 3), sh = (int)(bit & 7);
  uint32_t v = row[byte];
  if (sh + bits > 8) v |= (uint32_t)row[byte + 1] << 8;
  return (int)((v >> sh) & ((1u << bits) - 1));
}

// Decode columns [k0, k0 + n) of row r into y. int/nf4: any span; GGML: k0 and n multiples of the block.
inline void decode_span(const hfq_cpu::Weight& W, int64_t r, int64_t k0, int64_t n, float* y) {
  if (W.fmt == hfq_cpu::FMT_INT) {
    const u8* row = W.w + r * W.row_bytes;
    const int64_t G = W.in / W.group;
    const uint16_t* sc = W.scales + r * G;
    const u8* zp = W.zeros ? W.zeros + r * G : nullptr;
    const float zsym = (float)(1 << (W.bits - 1));
    if (W.g_idx) {   // act-order: each column names its group
      for (int64_t i = 0; i < n; ++i) {
        const int64_t k = k0 + i, g = W.g_idx[k];
        y[i] = ((float)int_code(row, W.bits, k) - (zp ? (float)zp[g] : zsym)) * half_to_f32(sc[g]);
      }
      return;
    }
    for (int64_t i = 0; i < n;) {   // one group at a time: its scale and zero, then its codes
      const int64_t k = k0 + i, g = k / W.group, end = (g + 1) * W.group - k0 < n ? (g + 1) * W.group - k0 : n;
      const float s = half_to_f32(sc[g]), z = zp ? (float)zp[g] : zsym;
      if (W.bits == 4 && !(k & 1) && !((end - i) & 1)) {
        const u8* p = row + (k >> 1);
        for (int64_t j = 0; j < (end - i) >> 1; ++j) {
          y[i + 2 * j] = ((float)(p[j] & 0xF) - z) * s;
          y[i + 2 * j + 1] = ((float)(p[j] >> 4) - z) * s;
        }
      } else if (W.bits == 8) {
        const u8* p = row + k;
        for (int64_t j = 0; j < end - i; ++j) y[i + j] = ((float)p[j] - z) * s;
      } else {
        for (int64_t j = i; j < end; ++j) y[j] = ((float)int_code(row, W.bits, k0 + j) - z) * s;
      }
      i = end;
    }
  } else if (W.fmt == hfq_cpu::FMT_LUT4) {
    for (int64_t i = 0; i < n;) {   // one block at a time
      const int64_t f = r * W.in + k0 + i, b = f / W.group;
      const int64_t end = (b + 1) * W.group - (r * W.in + k0) < n ? (b + 1) * W.group - (r * W.in + k0) : n;
      const float a = W.absmax[b];
      for (int64_t j = i; j < end; ++j) {
        const int64_t fj = r * W.in + k0 + j;
        const u8 byte = W.w[fj >> 1];
        y[j] = W.lut[(fj & 1) ? (byte & 0xF) : (byte >> 4)] * a;
      }
      i = end;
    }
  } else {
    const GgmlInfo t = ggml_info(W.fmt);
    const u8* p = W.w + r * W.row_bytes + (k0 / t.block) * t.bytes;
    for (int64_t i = 0; i < n; i += t.block, p += t.bytes) t.dec(p, y + i);
  }
}

// Round a float buffer into the output type (separate loops, so each one vectorizes).
inline void convert_out(const float* buf, int64_t n, void* out, int out_type) {
  if (out_type == hfq_cpu::OUT_F32) { std::memcpy(out, buf, n * 4); return; }
  uint16_t* o = static_cast<uint16_t*>(out);
  if (out_type == hfq_cpu::OUT_BF16) for (int64_t i = 0; i < n; ++i) o[i] = f32_to_bf16(buf[i]);
  else for (int64_t i = 0; i < n; ++i) o[i] = f32_to_f16(buf[i]);
}

// Rows [r0, r1) into out, row r at out + (r - r0) * in.
inline void dequant_rows(const hfq_cpu::Weight& W, int64_t r0, int64_t r1, void* out, int out_type) {
  float buf[256];
  const int64_t es = out_type == hfq_cpu::OUT_F32 ? 4 : 2;
  for (int64_t r = r0; r < r1; ++r)
    for (int64_t k = 0; k < W.in; k += 256) {
      const int64_t n = W.in - k < 256 ? W.in - k : 256;
      decode_span(W, r, k, n, buf);
      convert_out(buf, n, static_cast<char*>(out) + ((r - r0) * W.in + k) * es, out_type);
    }
}

// Generic engine: decode 256 columns, then dot them with every row of x. DOT is the unit's float dot product.
template <float (*DOT)(const float*, const float*, int64_t)>
void gemv_generic(const hfq_cpu::Weight& W, const hfq_cpu::Acts& a, int64_t r0, int64_t r1, float* y) {
  float buf[256];
  for (int64_t r = r0; r < r1; ++r) {
    float acc[16] = {0};
    for (int64_t k = 0; k < W.in; k += 256) {
      const int64_t n = W.in - k < 256 ? W.in - k : 256;
      decode_span(W, r, k, n, buf);
      for (int m = 0; m < a.m; ++m) acc[m] += DOT(buf, a.x + m * a.k + k, n);
    }
    for (int m = 0; m < a.m; ++m) y[m * W.out + r] = acc[m];
  }
}
