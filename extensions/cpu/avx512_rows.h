// Shared by the AVX-512 units (included inside their anonymous namespace, after their target pragma):
// helpers, slot orders and the per-format row unpackers of the integer engine.
#pragma once

float dot(const float* a, const float* b, int64_t n) {
  __m512 s0 = _mm512_setzero_ps(), s1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    s0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), s0);
    s1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), s1);
  }
  for (; i < n; i += 16) {
    const __mmask16 k = n - i >= 16 ? 0xFFFF : (__mmask16)((1u << (n - i)) - 1);
    s0 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, a + i), _mm512_maskz_loadu_ps(k, b + i), s0);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(s0, s1));
}

// ---- slot orders: which column of a 64-column chunk each int16 slot holds (v0 = slots 0..31, v1 = 32..63) ----
// NAT: natural. EO: even columns, then odd ones (nibble pairs of one byte). L32: two 32-column blocks, their
// first halves, then their second halves. S16: v0 holds columns 0-7 of each 16-column segment, v1 columns 8-15.
enum Slot { NAT = 0, EO = 1, L32 = 2, S16 = 3 };

inline int slot_col(Slot s, int slot) {
  const int v = slot >> 5, j = slot & 31;
  switch (s) {
    case EO: return 2 * j + v;
    case L32: return (j < 16 ? j : j + 16) + 16 * v;
    case S16: return 16 * (j >> 3) + 8 * v + (j & 7);
    default: return slot;
  }
}

inline __m512i plane_hi(__m512i v) {   // decode.h's plane_hi on 16 int32 lanes
  return _mm512_srai_epi32(_mm512_add_epi32(v, _mm512_set1_epi32(128)), 8);
}
inline __m512i widen_u8(const u8* p) { return _mm512_cvtepu8_epi16(_mm256_loadu_si256((const __m256i*)p)); }
inline __m256i two16(const u8* p0, const u8* p1) {   // 16 bytes at p0, then 16 at p1
  return _mm256_inserti128_si256(_mm256_castsi128_si256(_mm_loadu_si128((const __m128i*)p0)),
                                 _mm_loadu_si128((const __m128i*)p1), 1);
}
inline __m512i nib_lo(__m512i w) { return _mm512_and_si512(w, _mm512_set1_epi16(0xF)); }
inline __m512i nib_hi(__m512i w) { return _mm512_srli_epi16(w, 4); }
inline float h2f(const u8* p) { uint16_t h; std::memcpy(&h, p, 2); return _cvtsh_ss(h); }
inline float h2f(uint16_t h) { return _cvtsh_ss(h); }
// 16 float lanes: a for lanes 0-7, b for lanes 8-15
inline __m512 halves(float a, float b) { return _mm512_mask_blend_ps(0xFF00, _mm512_set1_ps(a), _mm512_set1_ps(b)); }
inline __m512i halves16(int a, int b) {   // 32 int16 words: a for words 0-15, b for 16-31
  return _mm512_mask_blend_epi16(0xFFFF0000u, _mm512_set1_epi16((short)a), _mm512_set1_epi16((short)b));
}

// ---- formats. chunk(c, v0, v1, s, b4): int16 codes, the per-lane float scale, and the four segments' minimum
// terms (w = s * v + b within a segment). Chunks are visited in order 0, 1, 2, ... ----

template <int KIND>   // 4: nibbles (EO), 8: bytes, 0: any other width (both S16)
struct IntRow {   // b-bit codes; groups that are powers of two from 16, or the whole row
  static constexpr bool has_b = false;
  const Weight* W;
  const u8* row;
  const uint16_t* sc;
  const u8* zp;
  int64_t G, nbytes, full;   // full: chunks whose codes and groups lie wholly inside the row
  int gshift, bits;
  short zsym;
  __m512i perm0, perm1, shift0, shift1;   // vpermb + vpsrlvw unpacking (S16 order), bits other than 4

  IntRow(const Weight& w) : W(&w), G(w.in / w.group), nbytes(w.row_bytes), full(w.in / 64),
                            gshift(__builtin_ctzll((unsigned long long)w.group)), bits(w.bits),
                            zsym((short)(1 << (w.bits - 1))) {
    if (KIND == 4) return;
    alignas(64) uint8_t p[2][64];
    alignas(64) uint16_t sh[2][32];
    for (int v = 0; v < 2; ++v)
      for (int j = 0; j < 32; ++j) {
        const int bit = slot_col(S16, 32 * v + j) * bits;
        p[v][2 * j] = (uint8_t)(bit >> 3);
        p[v][2 * j + 1] = (uint8_t)(bit >> 3 < 63 ? (bit >> 3) + 1 : 63);
        sh[v][j] = (uint16_t)(bit & 7);
      }
    perm0 = _mm512_load_si512(p[0]);
    perm1 = _mm512_load_si512(p[1]);
    shift0 = _mm512_load_si512(sh[0]);
    shift1 = _mm512_load_si512(sh[1]);
  }
  void seek(int64_t r) {
    row = W->w + r * W->row_bytes;
    sc = W->scales + r * G;
    zp = W->zeros ? W->zeros + r * G : nullptr;
    last = -1;
  }
  // Scale per lane and zero per word. Lanes 4s..4s+3 and words 8s..8s+7 of v0 and v1 are segment s (EO, S16).
  int64_t last = -1;   // groups of 64 and more: the group whose scale and zero s_last, z_last hold
  __m512 s_last;
  __m512i z_last;
  HFQ_INLINE void scales(int64_t c, __m512& s, __m512i& z) {
    if (G == 1 || W->group >= 64) {
      const int64_t g = G == 1 ? 0 : (64 * c) >> gshift;
      if (g != last) {
        s_last = _mm512_set1_ps(h2f(sc[g]));
        z_last = _mm512_set1_epi16(zp ? (short)zp[g] : zsym);
        last = g;
      }
      s = s_last;
      z = z_last;
    } else if (W->group == 32 && c < full) {
      s = halves(h2f(sc[2 * c]), h2f(sc[2 * c + 1]));
      z = zp ? halves16(zp[2 * c], zp[2 * c + 1]) : _mm512_set1_epi16(zsym);
    } else {   // groups of 16, and the last, partial chunk of groups of 32
      alignas(16) float A[4];
      alignas(64) short Z[32] = {0};
      for (int k = 0; k < 4; ++k) {
        int64_t g = (64 * c + 16 * k) >> gshift;
        if (g >= G) g = G - 1;   // segments past the row end: their codes and x are zero
        A[k] = h2f(sc[g]);
        Z[k] = zp ? (short)zp[g] : zsym;
      }
      s = _mm512_permutexvar_ps(_mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0),
                                _mm512_castps128_ps512(_mm_load_ps(A)));
      z = _mm512_permutexvar_epi16(_mm512_srli_epi16(_mm512_set_epi16(31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21,
          20, 19, 18, 17, 16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0), 3), _mm512_load_si512(Z));
    }
  }
  HFQ_INLINE __m512i bytes(int64_t off, int64_t n) const {   // n (<= 64) bytes at off, zero past the row end
    const int64_t avail = nbytes - off;
    if (avail >= 64) return _mm512_loadu_si512(row + off);
    const __mmask64 k = avail >= n ? (n == 64 ? ~0ull : ((1ull << n) - 1)) : ((1ull << avail) - 1);
    return _mm512_maskz_loadu_epi8(k, row + off);
  }
  HFQ_INLINE void chunk(int64_t c, __m512i& v0, __m512i& v1, __m512& s, __m128& b4) {
    if (KIND == 4) {   // EO: byte j holds columns 2j (low nibble) and 2j+1
      const __m512i w = c < full ? widen_u8(row + 32 * c)
                                 : _mm512_cvtepu8_epi16(_mm512_castsi512_si256(bytes(32 * c, 32)));
      v0 = nib_lo(w);
      v1 = nib_hi(w);
    } else if (KIND == 8) {
      const __m512i b = bytes(64 * c, 64);
      v0 = _mm512_maskz_permutexvar_epi8(0x5555555555555555ull, perm0, b);
      v1 = _mm512_maskz_permutexvar_epi8(0x5555555555555555ull, perm1, b);
    } else {   // the two bytes around each code's bit offset, shifted down and masked
      const __m512i b = bytes(8 * bits * c, 8 * bits);
      const __m512i mask = _mm512_set1_epi16((short)((1 << bits) - 1));
      v0 = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi8(perm0, b), shift0), mask);
      v1 = _mm512_and_si512(_mm512_srlv_epi16(_mm512_permutexvar_epi8(perm1, b), shift1), mask);
    }
    __m512i z;
    scales(c, s, z);
    v0 = _mm512_sub_epi16(v0, z);   // past the row end x is zero, so these slots add nothing
    v1 = _mm512_sub_epi16(v1, z);
    b4 = _mm_setzero_ps();
  }
};

struct Lut4Row {   // nf4/fp4 (EO), rows aligned to 64 columns in the flattened stream
  static constexpr bool has_b = false;
  const Weight* W;
  const u8* p;
  const float* am;
  __m512i table;
  float inv;
  int gshift;
  Lut4Row(const Weight& w, const __m512i& t, float inv_scale)
      : W(&w), table(t), inv(inv_scale), gshift(__builtin_ctzll((unsigned long long)w.group)) {}
  void seek(int64_t r) { p = W->w + r * W->in / 2; am = W->absmax + ((r * W->in) >> gshift); }
  HFQ_INLINE void chunk(int64_t c, __m512i& v0, __m512i& v1, __m512& s, __m128& b4) const {
    const __m512i w = widen_u8(p + 32 * c);
    v0 = _mm512_permutexvar_epi16(nib_hi(w), table);   // the first code of a byte is in its high nibble
    v1 = _mm512_permutexvar_epi16(nib_lo(w), table);
    if (W->group >= 64) s = _mm512_set1_ps(am[(64 * c) >> gshift] * inv);
    else s = halves(am[2 * c] * inv, am[2 * c + 1] * inv);   // blocks of 32: lanes 0-7 hold columns 0..31
    b4 = _mm_setzero_ps();
  }
};

// Legacy 32-blocks (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0): a chunk is two blocks, L32 order.
template <int FMT>
struct LegacyRow {
  static constexpr bool has_b = FMT == FMT_Q4_1 || FMT == FMT_Q5_1;   // minimums; the other codes are signed
  static constexpr int BYTES = ggml_block_bytes(FMT);
  static constexpr int QS = FMT == FMT_Q4_0 ? 2 : FMT == FMT_Q4_1 ? 4 : FMT == FMT_Q5_0 ? 6 : FMT == FMT_Q5_1 ? 8 : 2;
  const Weight* W;
  const u8* row;
  int64_t nblk;
  explicit LegacyRow(const Weight& w) : W(&w), nblk(w.in / 32) {}
  void seek(int64_t r) { row = W->w + r * W->row_bytes; }
  HFQ_INLINE void chunk(int64_t c, __m512i& v0, __m512i& v1, __m512& s, __m128& b4) const {
    const u8* b0 = row + 2 * c * BYTES;
    const bool two = 2 * c + 1 < nblk;
    const u8* b1 = two ? b0 + BYTES : b0;   // a lone last block: its twin's codes are zeroed below
    const float d0 = h2f(b0), d1 = two ? h2f(b1) : 0.f;
    s = halves(d0, d1);
    if (FMT == FMT_Q8_0) {
      v0 = _mm512_cvtepi8_epi16(two16(b0 + 2, b1 + 2));
      v1 = _mm512_cvtepi8_epi16(two16(b0 + 18, b1 + 18));
      b4 = _mm_setzero_ps();
    } else {
      const __m512i w = _mm512_cvtepu8_epi16(two16(b0 + QS, b1 + QS));
      v0 = nib_lo(w);
      v1 = nib_hi(w);
      if (FMT == FMT_Q5_0 || FMT == FMT_Q5_1) {
        constexpr int QH = FMT == FMT_Q5_0 ? 2 : 4;
        uint32_t h0, h1;
        std::memcpy(&h0, b0 + QH, 4);
        std::memcpy(&h1, b1 + QH, 4);
        const __mmask32 k0 = (h0 & 0xFFFF) | (h1 << 16), k1 = (h0 >> 16) | (h1 & 0xFFFF0000u);
        v0 = _mm512_mask_add_epi16(v0, k0, v0, _mm512_set1_epi16(16));   // the nibble is below 16: + is |
        v1 = _mm512_mask_add_epi16(v1, k1, v1, _mm512_set1_epi16(16));
      }
      if (FMT == FMT_Q4_0 || FMT == FMT_Q5_0) {
        const __m512i off = _mm512_set1_epi16(FMT == FMT_Q4_0 ? 8 : 16);
        v0 = _mm512_sub_epi16(v0, off);
        v1 = _mm512_sub_epi16(v1, off);
        b4 = _mm_setzero_ps();
      } else {
        const float B0 = h2f(b0 + 2), B1 = two ? h2f(b1 + 2) : 0.f;
        b4 = _mm_set_ps(B1, B1, B0, B0);
      }
    }
    if (!two) {
      v0 = _mm512_maskz_mov_epi16(0x0000FFFFu, v0);
      v1 = _mm512_maskz_mov_epi16(0x0000FFFFu, v1);
    }
  }
};

// K-quants: super-block scales and minimums (for the byte engine, kern_avx512_k8.cpp) and int16 codes of a quarter
// of a super-block, NAT order (for the exact dequantizer).
template <int FMT>
struct KRow {
  static constexpr int BYTES = ggml_block_bytes(FMT);
  const Weight* W;
  const u8* row;
  float d;
  __m512i scw;                // integer scale per 16-column segment of the current super-block, words 0..15
  alignas(16) float B[16];    // minimum term per segment
  explicit KRow(const Weight& w) : W(&w) {}
  void seek(int64_t r) { row = W->w + r * W->row_bytes; }
  HFQ_INLINE void mins(__m128i m8, float dmin, bool pairs) {   // B = -(dmin * m), m: bytes
    const __m512 m = _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(m8));
    const __m512 b = _mm512_sub_ps(_mm512_setzero_ps(), _mm512_mul_ps(_mm512_set1_ps(dmin), m));
    if (pairs)   // one minimum per 32 columns: segments 2j and 2j+1 share m[j]
      _mm512_store_ps(B, _mm512_permutexvar_ps(_mm512_set_epi32(7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0), b));
    else
      _mm512_store_ps(B, b);
  }
  HFQ_INLINE void superblock(const u8* b) {
    if (FMT == FMT_Q4_K || FMT == FMT_Q5_K) {   // 6-bit scales and mins, ggml's packing (k4_scale_min)
      uint32_t u[4];
      std::memcpy(u, b + 4, 12);
      const uint32_t k1 = 0x3f3f3f3f, k2 = 0x0f0f0f0f, k3 = 0x03030303;
      u[3] = ((u[2] >> 4) & k2) | (((u[1] >> 6) & k3) << 4);
      const uint32_t m03 = u[1] & k1;
      u[1] = (u[2] & k2) | (((u[0] >> 6) & k3) << 4);
      u[2] = m03;
      u[0] &= k1;
      const __m128i v = _mm_set_epi32((int)u[3], (int)u[2], (int)u[1], (int)u[0]);   // bytes 0-7 scales, 8-15 mins
      d = h2f(b);
      scw = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(v, v)));   // per segment
      mins(_mm_srli_si128(v, 8), h2f(b + 2), true);
    } else if (FMT == FMT_Q6_K) {
      d = h2f(b + 208);
      scw = _mm512_castsi256_si512(_mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i*)(b + 192))));
    } else if (FMT == FMT_Q3_K) {   // q3_scale: low nibbles from bytes 0..7, two high bits from bytes 8..11
      d = h2f(b + 108);
      const __m128i s = _mm_loadu_si128((const __m128i*)(b + 96));
      const __m128i lo = _mm_and_si128(_mm_unpacklo_epi64(s, _mm_srli_epi16(s, 4)), _mm_set1_epi8(0xF));
      const __m256i hb = _mm256_cvtepu8_epi16(_mm_shuffle_epi8(s, _mm_set_epi8(11, 10, 9, 8, 11, 10, 9, 8, 11, 10, 9,
                                                                                   8, 11, 10, 9, 8)));
      const __m256i hi = _mm256_and_si256(_mm256_srlv_epi16(hb, _mm256_set_epi16(6, 6, 6, 6, 4, 4, 4, 4, 2, 2, 2, 2,
                                                                                0, 0, 0, 0)), _mm256_set1_epi16(3));
      const __m256i sc = _mm256_or_si256(_mm256_cvtepu8_epi16(lo), _mm256_slli_epi16(hi, 4));
      scw = _mm512_castsi256_si512(_mm256_sub_epi16(sc, _mm256_set1_epi16(32)));
    } else {   // Q2_K: scale in the low nibble, minimum in the high one
      d = h2f(b + 80);
      const __m128i s = _mm_loadu_si128((const __m128i*)b);
      scw = _mm512_castsi256_si512(_mm256_cvtepu8_epi16(_mm_and_si128(s, _mm_set1_epi8(0xF))));
      mins(_mm_and_si128(_mm_srli_epi16(s, 4), _mm_set1_epi8(0xF)), h2f(b + 82), false);
    }
  }
  // The codes of chunk q of super-block b, NAT order, with the fixed offsets of Q3_K (4) and Q6_K (32) taken off.
  HFQ_INLINE void codes(const u8* b, int q, __m512i& v0, __m512i& v1) const {
    if (FMT == FMT_Q4_K || FMT == FMT_Q5_K) {
      const __m512i w = widen_u8(b + (FMT == FMT_Q4_K ? 16 : 48) + 32 * q);
      v0 = nib_lo(w);
      v1 = nib_hi(w);
      if (FMT == FMT_Q5_K) {   // high bit of column 64q + 32h + l is bit 2q + h of qh[l]
        const __m256i qh = _mm256_loadu_si256((const __m256i*)(b + 16));
        const __mmask32 k0 = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * q))));
        const __mmask32 k1 = _mm256_test_epi8_mask(qh, _mm256_set1_epi8((char)(1 << (2 * q + 1))));
        v0 = _mm512_mask_add_epi16(v0, k0, v0, _mm512_set1_epi16(16));
        v1 = _mm512_mask_add_epi16(v1, k1, v1, _mm512_set1_epi16(16));
      }
    } else {
      if (FMT == FMT_Q6_K) {   // column 32c' + l of this chunk: nibble (q&1) of ql[64h + 32c' + l], 2 bits of qh
        const int h = q >> 1;
        const __m128i sl = _mm_cvtsi32_si128(4 * (q & 1));
        const __m512i hb = widen_u8(b + 128 + 32 * h), m4 = _mm512_set1_epi16(0xF), m2 = _mm512_set1_epi16(0x30);
        const __m512i h0 = _mm512_and_si512(_mm512_srl_epi16(_mm512_slli_epi16(hb, 4), sl), m2);
        const __m512i h1 = _mm512_and_si512(_mm512_srl_epi16(_mm512_slli_epi16(hb, 2), sl), m2);
        const __m512i off = _mm512_set1_epi16(32);
        v0 = _mm512_sub_epi16(_mm512_or_si512(_mm512_and_si512(_mm512_srl_epi16(widen_u8(b + 64 * h), sl), m4), h0), off);
        v1 = _mm512_sub_epi16(_mm512_or_si512(_mm512_and_si512(_mm512_srl_epi16(widen_u8(b + 64 * h + 32), sl), m4), h1), off);
      } else {   // Q2_K, Q3_K: 2-bit planes 2(q&1) and 2(q&1)+1 of qs[32h .. 32h+31]
        const int h = q >> 1, k0 = 2 * (q & 1);
        const __m512i w = widen_u8(b + (FMT == FMT_Q3_K ? 32 : 16) + 32 * h), m3 = _mm512_set1_epi16(3);
        v0 = _mm512_and_si512(_mm512_srl_epi16(w, _mm_cvtsi32_si128(2 * k0)), m3);
        v1 = _mm512_and_si512(_mm512_srl_epi16(w, _mm_cvtsi32_si128(2 * k0 + 2)), m3);
        if (FMT == FMT_Q3_K) {   // high bit of column 64q + i is bit 2q + i/32 of hmask[i % 32]; codes are q - 4
          const __m256i hm = _mm256_loadu_si256((const __m256i*)b);
          const __mmask32 k0m = _mm256_test_epi8_mask(hm, _mm256_set1_epi8((char)(1 << (2 * q))));
          const __mmask32 k1m = _mm256_test_epi8_mask(hm, _mm256_set1_epi8((char)(1 << (2 * q + 1))));
          const __m512i four = _mm512_set1_epi16(4);
          v0 = _mm512_sub_epi16(_mm512_mask_add_epi16(v0, k0m, v0, four), four);
          v1 = _mm512_sub_epi16(_mm512_mask_add_epi16(v1, k1m, v1, four), four);
        }
      }
    }
  }
  // Exact per-segment factors in the reference's order: w = dl * q - ml (ml = 0 where there is no minimum).
  HFQ_INLINE void exact(const u8* b, float* dl, float* ml) const {
    if (FMT == FMT_Q4_K || FMT == FMT_Q5_K) {
      const float d0 = h2f(b), dmin = h2f(b + 2);
      for (int j = 0; j < 8; ++j) {
        int sc, m;
        k4_scale_min(b + 4, j, &sc, &m);
        dl[2 * j] = dl[2 * j + 1] = d0 * (float)sc;
        ml[2 * j] = ml[2 * j + 1] = dmin * (float)m;
      }
    } else if (FMT == FMT_Q6_K) {
      const float d0 = h2f(b + 208);
      for (int j = 0; j < 16; ++j) { dl[j] = d0 * (float)(int8_t)b[192 + j]; ml[j] = 0.f; }
    } else if (FMT == FMT_Q3_K) {
      const float d0 = h2f(b + 108);
      for (int j = 0; j < 16; ++j) { dl[j] = d0 * (float)(q3_scale(b + 96, j) - 32); ml[j] = 0.f; }
    } else {
      const float d0 = h2f(b + 80), dmin = h2f(b + 82);
      for (int j = 0; j < 16; ++j) { dl[j] = d0 * (float)(b[j] & 0xF); ml[j] = dmin * (float)(b[j] >> 4); }
    }
  }
};
