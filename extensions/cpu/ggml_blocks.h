// Per-type block encoders for ggml_quant.cpp (included there; uses its search functions). Layouts follow
// hfq/formats/ggml_layout.py, which tests check byte for byte against gguf-py and llama.cpp.
#pragma once

struct BlockType { int id; int block; int size; };

inline BlockType block_type(const std::string& t) {
  if (t == "Q4_0") return {2, 32, 18};
  if (t == "Q4_1") return {3, 32, 20};
  if (t == "Q5_0") return {6, 32, 22};
  if (t == "Q5_1") return {7, 32, 24};
  if (t == "Q8_0") return {8, 32, 34};
  if (t == "Q2_K") return {10, 256, 84};
  if (t == "Q3_K") return {11, 256, 110};
  if (t == "Q4_K") return {12, 256, 144};
  if (t == "Q5_K") return {13, 256, 176};
  if (t == "Q6_K") return {14, 256, 210};
  TORCH_CHECK(false, "quantize_ggml: unsupported GGML type ", t);
}

namespace {

// 32-blocks: nibble j holds element j (low) and j+16 (high); qh bit j is bit 4 of element j.
void pack32(const int* q, u8* qs, u8* qh) {
  uint32_t h = 0;
  for (int j = 0; j < 16; ++j) {
    qs[j] = (u8)((q[j] & 0xF) | ((q[j + 16] & 0xF) << 4));
    h |= (uint32_t)((q[j] >> 4) & 1) << j;
    h |= (uint32_t)((q[j + 16] >> 4) & 1) << (j + 16);
  }
  if (qh) std::memcpy(qh, &h, 4);
}

template <int nmax, bool five>
void enc_legacy_sym(const float* x, u8* y, const float* qw, float sigma2) {
  int q[32];
  float d;
  if (!qw) {
    float mx = first_absmax(32, x, nullptr);
    d = mx / -nmax;
    const float id = d ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) q[j] = std::min(2 * nmax - 1, (int)(int8_t)(x[j] * id + (nmax + 0.5f)));
  } else {
    float wt[32];
    int8_t L[32];
    for (int j = 0; j < 32; ++j) wt[j] = qw[j] * std::sqrt(sigma2 + x[j] * x[j]);
    d = search_qx<32, nmax>(x, L, wt);
    for (int j = 0; j < 32; ++j) q[j] = L[j];
  }
  put_h(y, d);
  pack32(q, y + (five ? 6 : 2), five ? y + 2 : nullptr);
}

template <int nmax, bool five>
void enc_legacy_asym(const float* x, u8* y, const float* qw, float sigma2) {
  int q[32];
  float d, m;
  if (!qw) {
    float mn = FLT_MAX, mx = -FLT_MAX;
    for (int j = 0; j < 32; ++j) { if (x[j] < mn) mn = x[j]; if (x[j] > mx) mx = x[j]; }
    d = (mx - mn) / nmax;
    const float id = d ? 1.0f / d : 0.0f;
    for (int j = 0; j < 32; ++j) {
      int v = (int)((x[j] - mn) * id + 0.5f);
      q[j] = five ? (v & 0x1F) : std::min(15, (int)(int8_t)v);
    }
    m = mn;
  } else {
    float wt[32], the_min;
    u8 L[32];
    for (int j = 0; j < 32; ++j) wt[j] = qw[j] * std::sqrt(sigma2 + x[j] * x[j]);
    d = search_qkx<32, nmax>(x, wt, L, &the_min, -0.9f, 0.05f, 36, false, true);
    m = -the_min;
    for (int j = 0; j < 32; ++j) q[j] = L[j];
  }
  put_h(y, d);
  put_h(y + 2, m);
  pack32(q, y + (five ? 8 : 4), five ? y + 4 : nullptr);
}

void enc_q8_0(const float* x, u8* y) {
  float amax = 0;
  for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
  const float d = amax / 127, id = d ? 1.0f / d : 0.0f;
  put_h(y, d);
  for (int j = 0; j < 32; ++j) y[2 + j] = (u8)(int8_t)std::roundf(x[j] * id);
}

// 2-bit planes: byte 32h + l, bits 2k = element 128h + 32k + l.
void pack2(const u8* L, u8* qs) {
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const u8* e = L + 128 * h + l;
      qs[32 * h + l] = (u8)((e[0] & 3) | ((e[32] & 3) << 2) | ((e[64] & 3) << 4) | ((e[96] & 3) << 6));
    }
}

void enc_q2_k(const float* x, u8* y, const float* qw) {
  u8 L[256], sc[16];
  float scales[16], mins[16], dm, mm;
  if (!qw) {
    float wt[16], ms = 0, mmx = 0;
    for (int j = 0; j < 16; ++j) {
      for (int l = 0; l < 16; ++l) wt[l] = std::fabs(x[16 * j + l]);
      scales[j] = search_qkx<16, 3>(x + 16 * j, wt, L + 16 * j, &mins[j], -0.5f, 0.1f, 15, true, false);
      if (scales[j] > ms) ms = scales[j];
      if (mins[j] > mmx) mmx = mins[j];
    }
    for (int j = 0; j < 16; ++j) sc[j] = ms > 0 ? (u8)nint(15.f / ms * scales[j]) : 0;
    if (mmx > 0)
      for (int j = 0; j < 16; ++j) sc[j] |= (u8)(nint(15.f / mmx * mins[j]) << 4);
    put_h(y + 80, ms > 0 ? ms / 15.f : 0.f);
    put_h(y + 82, mmx > 0 ? mmx / 15.f : 0.f);
  } else {
    float wt[256], sw[16];
    const float sigma2 = seq_sq(256, x) / 256;
    for (int i = 0; i < 256; ++i) wt[i] = qw[i] * std::sqrt(sigma2 + x[i] * x[i]);
    for (int j = 0; j < 16; ++j) {
      sw[j] = 0;
      for (int l = 0; l < 16; ++l) sw[j] += wt[16 * j + l];
      scales[j] = search_qkx<16, 3>(x + 16 * j, wt + 16 * j, L + 16 * j, &mins[j], -0.9f, 0.05f, 36, false, true);
    }
    u8 Ls[16], Lm[16];
    dm = search_qp(16, 15, scales, Ls, sw);
    mm = search_qp(16, 15, mins, Lm, sw);
    put_h(y + 80, dm);
    put_h(y + 82, mm);
    for (int j = 0; j < 16; ++j) sc[j] = (u8)(Ls[j] | (Lm[j] << 4));
  }
  const float d = get_h(y + 80), dmin = get_h(y + 82);
  for (int j = 0; j < 16; ++j) {
    const float dl = d * (sc[j] & 0xF);
    if (!dl) continue;
    const float ml = dmin * (sc[j] >> 4);
    for (int i = 0; i < 16; ++i) L[16 * j + i] = (u8)clampv(nint((x[16 * j + i] + ml) / dl), 0, 3);
  }
  std::memcpy(y, sc, 16);
  pack2(L, y + 16);
}

void enc_q3_k(const float* x, u8* y, const float* qw) {
  int8_t L[256];
  float scales[16];
  int ls[16];
  float dblock;
  if (!qw) {
    for (int j = 0; j < 16; ++j) scales[j] = search_q3(16, 4, x + 16 * j, L + 16 * j);
    const float mx = first_absmax(16, scales, nullptr);
    if (mx) {
      const float iscale = -32.f / mx;
      for (int j = 0; j < 16; ++j) ls[j] = clampv(nint(iscale * scales[j]), -32, 31) + 32;
      dblock = 1 / iscale;
    } else {
      for (int j = 0; j < 16; ++j) ls[j] = 0;
      dblock = 0.f;
    }
  } else {
    float wt[256], sw[16];
    const float sigma2 = 2 * seq_sq(256, x) / 256;
    for (int i = 0; i < 256; ++i) wt[i] = qw[i] * std::sqrt(sigma2 + x[i] * x[i]);
    for (int j = 0; j < 16; ++j) {
      sw[j] = 0;
      for (int l = 0; l < 16; ++l) sw[j] += wt[16 * j + l];
      scales[j] = search_qx<16, 4>(x + 16 * j, L + 16 * j, wt + 16 * j);
    }
    int8_t Ls[16];
    dblock = search_qx<16, 32>(scales, Ls, sw);
    for (int j = 0; j < 16; ++j) ls[j] = Ls[j];
  }
  u8* s = y + 96;
  std::memset(s, 0, 12);
  for (int j = 0; j < 16; ++j) {
    if (j < 8) s[j] = (u8)(ls[j] & 0xF); else s[j - 8] |= (u8)((ls[j] & 0xF) << 4);
    s[8 + j % 4] |= (u8)((ls[j] >> 4) << (2 * (j / 4)));
  }
  put_h(y + 108, dblock);
  const float d = get_h(y + 108);
  for (int j = 0; j < 16; ++j) {
    const float dl = d * (ls[j] - 32);
    if (!dl) continue;
    for (int i = 0; i < 16; ++i) L[16 * j + i] = (int8_t)(clampv(nint(x[16 * j + i] / dl), -4, 3) + 4);
  }
  u8 lo[256];
  std::memset(y, 0, 32);
  for (int e = 0; e < 256; ++e) {
    int v = L[e];
    if (v > 3) { y[e % 32] |= (u8)(1 << (e / 32)); v -= 4; }
    lo[e] = (u8)v;
  }
  pack2(lo, y + 32);
}

// Q4_K / Q5_K: d, dmin, 12 scale bytes, [qh], nibbles.
void enc_q45_k(const float* x, u8* y, const float* qw, int nmax) {
  u8 L[256], ls[8], lm[8];
  float scales[8], mins[8];
  if (!qw) {
    float wt[32], ms = 0, mmx = 0;
    for (int j = 0; j < 8; ++j) {
      const float av = std::sqrt(seq_sq(32, x + 32 * j) / 32);
      for (int l = 0; l < 32; ++l) wt[l] = av + std::fabs(x[32 * j + l]);
      scales[j] = nmax == 15
          ? search_qkx<32, 15>(x + 32 * j, wt, L + 32 * j, &mins[j], -1.f, 0.1f, 20, false, false)
          : search_qkx<32, 31>(x + 32 * j, wt, L + 32 * j, &mins[j], -0.5f, 0.1f, 15, false, false);
      if (scales[j] > ms) ms = scales[j];
      if (mins[j] > mmx) mmx = mins[j];
    }
    const float inv_s = ms > 0 ? 63.f / ms : 0.f, inv_m = mmx > 0 ? 63.f / mmx : 0.f;
    for (int j = 0; j < 8; ++j) {
      ls[j] = std::min<u8>(63, (u8)nint(inv_s * scales[j]));
      lm[j] = std::min<u8>(63, (u8)nint(inv_m * mins[j]));
    }
    put_h(y, ms / 63.f);
    put_h(y + 2, mmx / 63.f);
  } else {
    float wt[256], sw[8];
    const float sigma2 = 2 * seq_sq(256, x) / 256;
    for (int i = 0; i < 256; ++i) wt[i] = qw[i] * std::sqrt(sigma2 + x[i] * x[i]);
    for (int j = 0; j < 8; ++j) {
      sw[j] = 0;
      for (int l = 0; l < 32; ++l) sw[j] += wt[32 * j + l];
      scales[j] = nmax == 15
          ? search_qkx<32, 15>(x + 32 * j, wt + 32 * j, L + 32 * j, &mins[j], -0.9f, 0.05f, 36, false, true)
          : search_qkx<32, 31>(x + 32 * j, wt + 32 * j, L + 32 * j, &mins[j], -0.9f, 0.05f, 36, false, true);
    }
    put_h(y, search_qp(8, 63, scales, ls, sw));
    put_h(y + 2, search_qp(8, 63, mins, lm, sw));
  }
  u8* s = y + 4;
  for (int j = 0; j < 4; ++j) {
    s[j] = (u8)((ls[j] & 63) | ((ls[j + 4] >> 4) << 6));
    s[j + 4] = (u8)((lm[j] & 63) | ((lm[j + 4] >> 4) << 6));
    s[j + 8] = (u8)((ls[j + 4] & 0xF) | ((lm[j + 4] & 0xF) << 4));
  }
  const float d = get_h(y), dmin = get_h(y + 2);
  for (int j = 0; j < 8; ++j) {
    const float dl = d * (ls[j] & 63);
    if (!dl) continue;
    const float ml = dmin * (lm[j] & 63);
    for (int i = 0; i < 32; ++i) L[32 * j + i] = (u8)clampv(nint((x[32 * j + i] + ml) / dl), 0, nmax);
  }
  u8* qs = y + (nmax == 15 ? 16 : 48);
  if (nmax == 31) std::memset(y + 16, 0, 32);
  for (int g = 0; g < 4; ++g)
    for (int l = 0; l < 32; ++l) {
      const int a = L[64 * g + l], b = L[64 * g + 32 + l];
      qs[32 * g + l] = (u8)((a & 0xF) | ((b & 0xF) << 4));
      if (nmax == 31) y[16 + l] |= (u8)(((a >> 4) << (2 * g)) | ((b >> 4) << (2 * g + 1)));
    }
}

void enc_q6_k(const float* x, u8* y, const float* qw) {
  int8_t L[256];
  float scales[16];
  for (int j = 0; j < 16; ++j) scales[j] = search_qx<16, 32>(x + 16 * j, L + 16 * j, qw ? qw + 16 * j : nullptr);
  float amax;
  const float mx = first_absmax(16, scales, &amax);
  if (amax < kEps) { std::memset(y, 0, 210); return; }
  const float iscale = -128.f / mx;
  put_h(y + 208, 1 / iscale);
  const float d = get_h(y + 208);
  int8_t* sc = reinterpret_cast<int8_t*>(y + 192);
  for (int j = 0; j < 16; ++j) sc[j] = (int8_t)std::min(127, nint(iscale * scales[j]));
  for (int j = 0; j < 16; ++j) {
    const float dl = d * sc[j];
    if (!dl) continue;
    for (int i = 0; i < 16; ++i) L[16 * j + i] = (int8_t)(clampv(nint(x[16 * j + i] / dl), -32, 31) + 32);
  }
  for (int h = 0; h < 2; ++h)
    for (int l = 0; l < 32; ++l) {
      const int8_t* e = L + 128 * h + l;
      y[64 * h + l] = (u8)((e[0] & 0xF) | ((e[64] & 0xF) << 4));
      y[64 * h + 32 + l] = (u8)((e[32] & 0xF) | ((e[96] & 0xF) << 4));
      y[128 + 32 * h + l] = (u8)(((e[0] >> 4) & 3) | (((e[32] >> 4) & 3) << 2) | (((e[64] >> 4) & 3) << 4) |
                                 (((e[96] >> 4) & 3) << 6));
    }
}

void encode_row(const BlockType& bt, const float* x, int64_t n, const float* qw, u8* y) {
  float row_sigma2 = 0;
  if (qw && bt.block == 32) row_sigma2 = seq_sq((int)n, x) / n;
  for (int64_t b = 0; b < n / bt.block; ++b) {
    const float* xb = x + b * bt.block;
    const float* wb = qw ? qw + b * bt.block : nullptr;
    u8* yb = y + b * bt.size;
    switch (bt.id) {
      case 2: enc_legacy_sym<8, false>(xb, yb, wb, row_sigma2); break;
      case 6: enc_legacy_sym<16, true>(xb, yb, wb, row_sigma2); break;
      case 3: enc_legacy_asym<15, false>(xb, yb, wb, row_sigma2); break;
      case 7: enc_legacy_asym<31, true>(xb, yb, wb, row_sigma2); break;
      case 8: enc_q8_0(xb, yb); break;
      case 10: enc_q2_k(xb, yb, wb); break;
      case 11: enc_q3_k(xb, yb, wb); break;
      case 12: enc_q45_k(xb, yb, wb, 15); break;
      case 13: enc_q45_k(xb, yb, wb, 31); break;
      case 14: enc_q6_k(xb, yb, wb); break;
    }
  }
}

}  // namespace
