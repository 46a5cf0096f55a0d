// AVX2+FMA kernels: the exact decoders (auto-vectorized for AVX2) and an integer GEMV engine for CPUs without
// AVX-512. x is quantized once per call to int16 per 64 columns (scale = max|x| / 32767, as the AVX-512 engine);
// each 32-column block of a row unpacks to two vectors of 16 int16 codes (zero points and code offsets
// subtracted), vpmaddwd takes the products into int32, and one float multiply-add per block applies weight scale
// x activation scale. Minimums (Q4_1, Q5_1) use float32 sums of x per 16 columns. nf4/fp4 values go through an
// int16 table (step 2^-14 of its largest value). k-quants and int4 with groups of 32 or more take the byte engines
// of kern_avx2_kq.cpp and kern_avx2_b4.cpp. Layouts it does not take (groups under 32, act-order) use the exact
// decoders and a float32 dot product.
#pragma GCC target("avx2,fma,f16c")
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "avx2_parts.h"
#include "qlinear.h"

namespace {
#include "decode.h"
#include "avx2_common.h"

using namespace hfq_cpu;

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

HFQ_INLINE __m256i u8x16(const u8* p) { return _mm256_cvtepu8_epi16(_mm_loadu_si128((const __m128i*)p)); }
HFQ_INLINE __m256i bits16(uint32_t m) {   // word j = 16 where bit j of m is set
  const __m256i b = _mm256_setr_epi16(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384,
                                      (short)0x8000);
  const __m256i t = _mm256_and_si256(_mm256_set1_epi16((short)m), b);
  return _mm256_and_si256(_mm256_cmpeq_epi16(t, b), _mm256_set1_epi16(16));
}
inline int pow2_shift(int64_t n) { return n > 0 && (n & (n - 1)) == 0 ? __builtin_ctzll((unsigned long long)n) : -1; }
HFQ_INLINE __m256i shr(__m256i v, int n) { return _mm256_srl_epi16(v, _mm_cvtsi32_si128(n)); }

// Slot orders of x within a 32-column block, matching how each format's codes unpack.
enum Slot { NAT, EO32, EO16, PK, PK2 };
inline int slot_col(Slot s, int j) {
  if (s == EO32) return j < 16 ? 2 * j : 2 * (j - 16) + 1;
  if (s == EO16) { const int t = j % 16; return 16 * (j / 16) + (t < 8 ? 2 * t : 2 * (t - 8) + 1); }
  if (s == PK) { const int t = j % 16; static const int q[4] = {0, 8, 4, 12}; return 16 * (j / 16) + q[t / 4] + t % 4; }
  if (s == PK2) return 8 * (j / 16) + j % 8 + 16 * (j % 16 / 8);
  return j;
}
inline Slot slot_of(const Weight& W) {
  if (W.fmt == FMT_LUT4) return EO16;
  if (W.fmt == FMT_INT && W.bits == 4) return EO32;
  if (W.fmt == FMT_INT && W.bits < 4) return PK;
  if (W.fmt == FMT_INT && W.bits < 8) return PK2;
  return NAT;
}

// One 32-column block b of the current row: codes A (slots 0..15), B (slots 16..31), the float factor s of their
// integer dot product, and the minimum factors of natural columns 0..15 and 16..31 (0: none).
struct Blk { __m256i A, B; float s, mA, mB; };

template <int KIND>   // 4, 8: nibbles, bytes; 3: 2 or 3 bits (PK); 7: 5 to 7 bits (PK2)
struct IntRow {
  const Weight& W;
  const u8* row = nullptr; const uint16_t* sc = nullptr; const u8* zp = nullptr;
  int64_t G;
  int bpg_shift;   // log2(blocks per group) where that is a power of two, else -1 (a division per block)
  int bpg;
  mutable int64_t last = -1;   // the group whose scale and zero s_last, z_last hold
  mutable float s_last = 0;
  mutable __m256i z_last;
  __m256i shuf[4], sh[4];   // 2, 3, 5, 6, 7-bit codes: per 8 codes, the two bytes holding each and its bit offset
  explicit IntRow(const Weight& w) : W(w), G(w.in / w.group), bpg_shift(pow2_shift(w.group / 32)),
                                     bpg((int)(w.group / 32)) {
    // 2 and 3 bits: one 16-byte window in both halves, 32-bit lane i takes code 8g + i. 5 to 7 bits: the low half
    // holds the block's bytes from 0 and the high half from 2 * bits (code 16), lane i takes code 4g + i % 4 of its
    // half, so every code lies within its half's 16 bytes.
    for (int g = 0; g < 4; ++g) {
      alignas(32) uint8_t c[32];
      alignas(32) int32_t s[8];
      for (int i = 0; i < 8; ++i) {
        const int off = W.bits < 4 ? W.bits * (8 * g + i) : W.bits * (4 * g + i % 4), at = 16 * (i / 4) + 4 * (i % 4);
        s[i] = off % 8;
        c[at] = (uint8_t)(off / 8);
        c[at + 1] = (uint8_t)(off / 8 + 1);
        c[at + 2] = c[at + 3] = 0x80;
      }
      shuf[g] = _mm256_load_si256((const __m256i*)c);
      sh[g] = _mm256_load_si256((const __m256i*)s);
    }
  }
  void seek(int64_t r) {
    row = W.w + r * W.row_bytes; sc = W.scales + r * G; zp = W.zeros ? W.zeros + r * G : nullptr; last = -1;
  }
  HFQ_INLINE void block(int64_t b, Blk& k) const {
    const int64_t g = bpg_shift >= 0 ? b >> bpg_shift : (int)b / bpg;
    if (g != last) {   // groups span several blocks: decode scale and zero once per group
      last = g;
      s_last = _cvtsh_ss(sc[g]);
      z_last = _mm256_set1_epi16((short)(zp ? zp[g] : 1 << (W.bits - 1)));
    }
    k.s = s_last;
    k.mA = k.mB = 0.f;
    const __m256i z = z_last;
    if (KIND == 4) {   // byte i: column 2i in the low nibble, 2i + 1 in the high
      const __m256i w = u8x16(row + 16 * b);
      k.A = _mm256_sub_epi16(_mm256_and_si256(w, _mm256_set1_epi16(0xF)), z);
      k.B = _mm256_sub_epi16(_mm256_srli_epi16(w, 4), z);
    } else if (KIND == 8) {
      k.A = _mm256_sub_epi16(u8x16(row + 32 * b), z);
      k.B = _mm256_sub_epi16(u8x16(row + 32 * b + 16), z);
    } else if (KIND == 3) {   // 2 or 3 bits: 8 or 12 bytes per block, codes in 32-bit lanes, packed to int16 (PK)
      const u8* p = row + 4 * W.bits * b;
      __m128i t = _mm_loadl_epi64((const __m128i*)p);   // never past the block's own bytes
      if (W.bits == 3) t = _mm_insert_epi32(t, (int)load_u32(p + 8), 2);
      const __m256i v = _mm256_broadcastsi128_si256(t);
      const __m256i mk = _mm256_set1_epi32((1 << W.bits) - 1);
      __m256i c[4];
      for (int g = 0; g < 4; ++g) c[g] = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(v, shuf[g]), sh[g]), mk);
      k.A = _mm256_sub_epi16(_mm256_packs_epi32(c[0], c[1]), z);
      k.B = _mm256_sub_epi16(_mm256_packs_epi32(c[2], c[3]), z);
    } else {   // 5 to 7 bits: 4 * bits bytes per block, two 16-byte windows (slot order PK2)
      const u8* p = row + 4 * W.bits * b;
      const __m128i lo = _mm_loadu_si128((const __m128i*)p);
      __m128i hi;
      if (32 * (b + 1) < W.in) {
        hi = _mm_loadu_si128((const __m128i*)(p + 2 * W.bits));   // may read into the next block, never used
      } else {   // the row's last block: never read past the weight's end
        alignas(16) u8 t[16] = {0};
        std::memcpy(t, p + 2 * W.bits, 2 * W.bits);
        hi = _mm_load_si128((const __m128i*)t);
      }
      const __m256i v = _mm256_inserti128_si256(_mm256_castsi128_si256(lo), hi, 1);
      const __m256i mk = _mm256_set1_epi32((1 << W.bits) - 1);
      __m256i c[4];
      for (int g = 0; g < 4; ++g) c[g] = _mm256_and_si256(_mm256_srlv_epi32(_mm256_shuffle_epi8(v, shuf[g]), sh[g]), mk);
      k.A = _mm256_sub_epi16(_mm256_packs_epi32(c[0], c[1]), z);
      k.B = _mm256_sub_epi16(_mm256_packs_epi32(c[2], c[3]), z);
    }
  }
};

struct LutRow {   // nf4/fp4: codes over the flattened weight, first code in the high nibble
  const Weight& W;
  const u8* row = nullptr; const float* am = nullptr;
  int64_t base = 0;
  __m256i tlo, thi;
  float inv;
  int gshift;   // blocks are powers of two (fast() checks)
  explicit LutRow(const Weight& w) : W(w), gshift(pow2_shift(w.group)) {
    float mx = 0;
    for (int i = 0; i < 16; ++i) mx = W.lut[i] > mx ? W.lut[i] : (-W.lut[i] > mx ? -W.lut[i] : mx);
    const float scale = mx > 0 ? 16383.f / mx : 0.f;   // two vpmaddwd of 2^14 x 2^15 stay below 2^31
    inv = mx > 0 ? mx / 16383.f : 0.f;
    alignas(16) uint8_t lo[16], hi[16];
    for (int i = 0; i < 16; ++i) {
      const uint16_t t = (uint16_t)(int16_t)__builtin_lrintf(W.lut[i] * scale);
      lo[i] = (uint8_t)(t & 0xFF);
      hi[i] = (uint8_t)(t >> 8);
    }
    tlo = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)lo));
    thi = _mm256_broadcastsi128_si256(_mm_load_si128((const __m128i*)hi));
  }
  void seek(int64_t r) { base = r * W.in; row = W.w + base / 2; am = W.absmax; }
  HFQ_INLINE void block(int64_t b, Blk& k) const {
    k.s = am[(base + 32 * b) >> gshift] * inv;
    k.mA = k.mB = 0.f;
    const __m128i v = _mm_loadu_si128((const __m128i*)(row + 16 * b)), m4 = _mm_set1_epi8(0xF);
    const __m256i idx = _mm256_set_m128i(_mm_and_si128(v, m4), _mm_and_si128(_mm_srli_epi16(v, 4), m4));
    const __m256i l = _mm256_shuffle_epi8(tlo, idx), h = _mm256_shuffle_epi8(thi, idx);
    k.A = _mm256_unpacklo_epi8(l, h);
    k.B = _mm256_unpackhi_epi8(l, h);
  }
};

template <int FMT>
struct G32Row {   // Q4_0, Q4_1, Q5_0, Q5_1, Q8_0
  static constexpr int BYTES = ggml_block_bytes(FMT);
  const Weight& W;
  const u8* row = nullptr;
  explicit G32Row(const Weight& w) : W(w) {}
  void seek(int64_t r) { row = W.w + r * W.row_bytes; }
  HFQ_INLINE void block(int64_t b, Blk& k) const {
    const u8* p = row + b * BYTES;
    k.s = h2f(p);
    k.mA = k.mB = (FMT == FMT_Q4_1 || FMT == FMT_Q5_1) ? h2f(p + 2) : 0.f;
    if (FMT == FMT_Q8_0) {
      k.A = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 2)));
      k.B = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(p + 18)));
      return;
    }
    const int qs = FMT == FMT_Q4_0 ? 2 : FMT == FMT_Q4_1 ? 4 : FMT == FMT_Q5_0 ? 6 : 8;
    const __m256i w = u8x16(p + qs);
    k.A = _mm256_and_si256(w, _mm256_set1_epi16(0xF));
    k.B = _mm256_srli_epi16(w, 4);
    if (FMT == FMT_Q5_0 || FMT == FMT_Q5_1) {
      const uint32_t qh = load_u32(p + (FMT == FMT_Q5_0 ? 2 : 4));
      k.A = _mm256_or_si256(k.A, bits16(qh & 0xFFFF));
      k.B = _mm256_or_si256(k.B, bits16(qh >> 16));
    }
    if (FMT == FMT_Q4_0 || FMT == FMT_Q5_0) {
      const __m256i off = _mm256_set1_epi16(FMT == FMT_Q4_0 ? 8 : 16);
      k.A = _mm256_sub_epi16(k.A, off);
      k.B = _mm256_sub_epi16(k.B, off);
    }
  }
};

// Even and odd blocks add into their own float sums: one chain of multiply-adds would wait on its own latency.
template <class R, int MT>
HFQ_INLINE void run_row(R& row, const Weight& W, const Acts& a, int m0, int64_t r, float* y, const char* pf,
                        int64_t step) {
  __m256 f[2][MT];
  float fb[2][MT];
  for (int m = 0; m < MT; ++m)
    for (int h = 0; h < 2; ++h) { f[h][m] = _mm256_setzero_ps(); fb[h][m] = 0.f; }
  const int64_t nb = W.in / 32, cs = a.chunks;
  Blk k;
  auto block = [&](int64_t b, auto half) __attribute__((always_inline)) {
    constexpr int H = decltype(half)::value;
    _mm_prefetch(pf + b * step, _MM_HINT_T0);
    row.block(b, k);
    const int64_t c = b >> 1;
    for (int m = 0; m < MT; ++m) {
      const int64_t i = (m0 + m) * cs + c;
      const int16_t* xq = a.q + i * 64 + 32 * H;
      const __m256i p = _mm256_add_epi32(_mm256_madd_epi16(k.A, _mm256_loadu_si256((const __m256i*)xq)),
                                         _mm256_madd_epi16(k.B, _mm256_loadu_si256((const __m256i*)(xq + 16))));
      f[H][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(k.s * a.d[i]), f[H][m]);
      if (k.mA != 0.f || k.mB != 0.f) {
        const float* s = a.s16 + i * 4 + 2 * H;
        fb[H][m] += k.mA * s[0] + k.mB * s[1];
      }
    }
  };
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {   // block b is the first half of chunk b / 2, block b + 1 the second
    block(b, std::integral_constant<int, 0>());
    block(b + 1, std::integral_constant<int, 1>());
  }
  if (b < nb) block(b, std::integral_constant<int, 0>());
  for (int m = 0; m < MT; ++m)
    y[(m0 + m) * W.out + r] = hsum(_mm256_add_ps(f[0][m], f[1][m])) + (fb[0][m] + fb[1][m]);
}

template <class R>
void run(R row, const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  // The hardware prefetcher alone left the head of Gemma (262144 x 640 Q8_0, 178 MB) at 13 GB/s: each block also
  // prefetches the bytes 2 KB ahead in the weight stream (rows are contiguous), never past this task's rows.
  const int64_t rb = W.fmt == FMT_LUT4 ? W.in / 2 : W.row_bytes, step = rb / (W.in / 32);
  const char* end = (const char*)(W.w + r1 * rb);
  for (int64_t r = r0; r < r1; ++r) {
    const char* pf = prefetch_start(W.w, r, rb, end);
    row_tiles(a.m, [&](auto mt, int m0) {
      row.seek(r);
      run_row<R, decltype(mt)::value>(row, W, a, m0, r, y, pf, step);
    });
  }
}

bool fast(const Weight& W) {
  if (W.g_idx || W.in % 32) return false;
  if (W.fmt == FMT_INT) return W.group % 32 == 0;
  if (W.fmt == FMT_LUT4) return W.group % 32 == 0 && pow2_shift(W.group) >= 0;
  return true;
}

void prep(const Weight& W, Acts& a) {
  if (avx2::kq(W)) return avx2::prep_kq(W, a);
  if (avx2::b4(W)) return avx2::prep_b4(W, a);
  const Slot s = slot_of(W);
  int src[32];
  for (int j = 0; j < 32; ++j) src[j] = slot_col(s, j);
  for (int m = 0; m < a.m; ++m) {
    const float* x = a.x + m * a.k;
    for (int64_t c = 0; c < a.chunks; ++c) {
      alignas(32) float v[64];
      const int64_t k0 = 64 * c, n = a.k - k0 < 64 ? a.k - k0 : 64;
      float mx = 0.f, total = 0.f;
      for (int j = 0; j < 64; ++j) v[j] = j < n ? x[k0 + j] : 0.f;
      for (int j = 0; j < 4; ++j) {
        float t = 0.f;
        for (int l = 0; l < 16; ++l) t += v[16 * j + l];
        a.s16[(m * a.chunks + c) * 4 + j] = t;
        total += t;
      }
      for (int j = 0; j < 64; ++j) mx = std::fabs(v[j]) > mx ? std::fabs(v[j]) : mx;
      const bool finite = total - total == 0.f;   // a nan or inf in x must reach y, as in the reference
      const float inv = mx > 0 && finite ? 32767.f / mx : 0.f;
      a.d[m * a.chunks + c] = finite ? mx / 32767.f : __builtin_nanf("");
      int16_t* q = a.q + (m * a.chunks + c) * 64;
      for (int h = 0; h < 2; ++h)
        for (int j = 0; j < 32; ++j) q[32 * h + j] = (int16_t)__builtin_lrintf(v[32 * h + src[j]] * inv);
    }
  }
}

void gemv(const Weight& W, const Acts& a, int64_t r0, int64_t r1, float* y) {
  if (!fast(W)) return gemv_generic<dot>(W, a, r0, r1, y);
  if (avx2::kq(W)) return avx2::gemv_kq(W, a, r0, r1, y);
  if (avx2::b4(W)) return avx2::gemv_b4(W, a, r0, r1, y);
  switch (W.fmt) {
    case FMT_INT:
      if (W.bits == 4) return run(IntRow<4>(W), W, a, r0, r1, y);
      if (W.bits == 8) return run(IntRow<8>(W), W, a, r0, r1, y);
      if (W.bits < 4) return run(IntRow<3>(W), W, a, r0, r1, y);
      return run(IntRow<7>(W), W, a, r0, r1, y);
    case FMT_LUT4: return run(LutRow(W), W, a, r0, r1, y);
    case FMT_Q4_0: return run(G32Row<FMT_Q4_0>(W), W, a, r0, r1, y);
    case FMT_Q4_1: return run(G32Row<FMT_Q4_1>(W), W, a, r0, r1, y);
    case FMT_Q5_0: return run(G32Row<FMT_Q5_0>(W), W, a, r0, r1, y);
    case FMT_Q5_1: return run(G32Row<FMT_Q5_1>(W), W, a, r0, r1, y);
    case FMT_Q8_0: return run(G32Row<FMT_Q8_0>(W), W, a, r0, r1, y);
    default: return gemv_generic<dot>(W, a, r0, r1, y);   // k-quant rows are whole super-blocks (kq)
  }
}

}  // namespace

namespace hfq_cpu {
const Kernels kernels_avx2 = {"avx2", dequant_rows, fast, prep, gemv};
}
