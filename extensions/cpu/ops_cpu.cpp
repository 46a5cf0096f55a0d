// CPU kernels of the hfq ops (schemas in hfq/kernels/ops.py), registered with TORCH_LIBRARY_IMPL.
//
// Few rows of x (decode): the GEMV engine of the chosen instruction set, parallel over output rows.
// Many rows (prefill): dequantize tiles of output rows into the compute dtype and multiply with torch's matmul
// (oneDNN, AMX where present); the whole float weight never exists.
// The instruction set is chosen once at load from the CPU (AVX-512 with BW/VL/DQ/VBMI/VNNI, plus BF16 where
// present, else AVX2+FMA, else scalar); HFQ_CPU_ISA=avx512|avx2|scalar caps it, and torch.ops.hfq_cpu.set_isa
// switches it for tests.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <iterator>
#include <string>

#include "qlinear.h"

namespace {

using hfq_cpu::Weight;
using hfq_cpu::Kernels;

constexpr int64_t kGemvMaxRows = 16;   // up to this many rows of x take the GEMV engine

bool has_avx512() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512vnni");
}
bool has_avx2() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

// Best first. set_isa(name) takes that level where the CPU has it; HFQ_CPU_ISA=name the best at or below it.
const Kernels* by_name(const std::string& n) {
  if (n == "avx512bf16")
    return has_avx512() && __builtin_cpu_supports("avx512bf16") ? &hfq_cpu::kernels_avx512bf16 : nullptr;
  if (n == "avx512") return has_avx512() ? &hfq_cpu::kernels_avx512 : nullptr;
  if (n == "avx2") return has_avx2() ? &hfq_cpu::kernels_avx2 : nullptr;
  if (n == "scalar") return &hfq_cpu::kernels_scalar;
  return nullptr;
}
constexpr const char* kLevels[] = {"avx512bf16", "avx512", "avx2", "scalar"};

const Kernels* detect() {   // the best level at or below HFQ_CPU_ISA's (unset or unknown: the best there is)
  const char* v = std::getenv("HFQ_CPU_ISA");
  const std::string cap = v ? v : "";
  bool on = std::find(std::begin(kLevels), std::end(kLevels), cap) == std::end(kLevels);
  for (const char* n : kLevels) {
    on = on || cap == n;
    if (on && by_name(n)) return by_name(n);
  }
  return &hfq_cpu::kernels_scalar;
}

const Kernels*& current() {
  static const Kernels* k = detect();
  return k;
}

std::string isa() { return current()->isa; }

// GEMV activations: int16 (default) or, for GGML types on AVX-512, int8 per 256 (k-quants) or 32 columns as
// llama.cpp does (about 2x faster, with the KL cost measured in docs/kernels.md). HFQ_CPU_ACTIVATIONS=int8 chooses it.
bool& int8_acts() {
  static bool on = [] { const char* v = std::getenv("HFQ_CPU_ACTIVATIONS"); return v && std::string(v) == "int8"; }();
  return on;
}
std::string activations() { return int8_acts() ? "int8" : "int16"; }
std::string set_activations(c10::string_view name) {
  const std::string n(name);
  TORCH_CHECK(n == "int8" || n == "int16", "hfq: activations '", n, "' is not one of int16, int8");
  int8_acts() = n == "int8";
  return n;
}

std::string set_isa(c10::string_view name) {
  const Kernels* k = by_name(std::string(name));
  TORCH_CHECK(k, "hfq: instruction set '", std::string(name), "' is not available on this CPU; allowed: avx512bf16, "
              "avx512, avx2, scalar (where the CPU has them)");
  current() = k;
  return k->isa;
}

int out_type(at::ScalarType t) {
  if (t == at::kFloat) return hfq_cpu::OUT_F32;
  if (t == at::kBFloat16) return hfq_cpu::OUT_BF16;
  TORCH_CHECK(t == at::kHalf, "hfq: dtype must be float32, bfloat16 or float16, got ", t);
  return hfq_cpu::OUT_F16;
}

void check_u8(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kByte, "hfq: ", what, " must be uint8, got ", t.scalar_type());
}

// ---- weights from op arguments ----

Weight int_weight(const at::Tensor& weight, const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                  int64_t bits) {
  check_u8(weight, "weight");
  TORCH_CHECK(bits >= 2 && bits <= 8, "hfq: bits must be 2..8, got ", bits);
  TORCH_CHECK(weight.dim() == 3, "hfq: int weight must be [out, groups, bytes], got ", weight.sizes());
  const int64_t out = weight.size(0), G = weight.size(1), gbytes = weight.size(2);
  TORCH_CHECK((gbytes * 8) % bits == 0, "hfq: a group of ", gbytes, " bytes does not hold whole ", bits, "-bit codes");
  TORCH_CHECK(scales.scalar_type() == at::kHalf && scales.dim() == 2 && scales.size(0) == out &&
              scales.size(1) == G, "hfq: scales must be float16 [", out, ", ", G, "], got ", scales.scalar_type(),
              " ", scales.sizes());
  if (zeros) {
    check_u8(*zeros, "zeros");
    TORCH_CHECK(zeros->sizes() == scales.sizes(), "hfq: zeros must be [", out, ", ", G, "], got ", zeros->sizes());
  }
  Weight w{};
  w.fmt = hfq_cpu::FMT_INT;
  w.bits = (int)bits;
  w.group = gbytes * 8 / bits;
  w.in = G * w.group;
  w.out = out;
  w.row_bytes = G * gbytes;
  return w;
}

int ggml_fmt(c10::string_view q, int64_t* block, int64_t* bytes) {
  static const struct { const char* name; int fmt, block, bytes; } T[] = {
      {"Q4_0", hfq_cpu::FMT_Q4_0, 32, 18}, {"Q4_1", hfq_cpu::FMT_Q4_1, 32, 20}, {"Q5_0", hfq_cpu::FMT_Q5_0, 32, 22},
      {"Q5_1", hfq_cpu::FMT_Q5_1, 32, 24}, {"Q8_0", hfq_cpu::FMT_Q8_0, 32, 34}, {"Q2_K", hfq_cpu::FMT_Q2_K, 256, 84},
      {"Q3_K", hfq_cpu::FMT_Q3_K, 256, 110}, {"Q4_K", hfq_cpu::FMT_Q4_K, 256, 144},
      {"Q5_K", hfq_cpu::FMT_Q5_K, 256, 176}, {"Q6_K", hfq_cpu::FMT_Q6_K, 256, 210}};
  std::string s(q);
  for (auto& c : s) c = (char)toupper((unsigned char)c);
  for (const auto& t : T)
    if (s == t.name) { *block = t.block; *bytes = t.bytes; return t.fmt; }
  TORCH_CHECK(false, "hfq: GGML type '", s, "' has no kernel; allowed: Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K, Q3_K, "
              "Q4_K, Q5_K, Q6_K");
}

Weight ggml_weight(const at::Tensor& weight, c10::string_view qtype, int64_t in) {
  check_u8(weight, "weight");
  int64_t block, bytes;
  const int fmt = ggml_fmt(qtype, &block, &bytes);
  TORCH_CHECK(weight.dim() == 2, "hfq: GGML weight must be [out, row_bytes], got ", weight.sizes());
  TORCH_CHECK(in > 0 && in % block == 0 && weight.size(1) == in / block * bytes, "hfq: ", std::string(qtype),
              " rows of ", in, " values take ", in % block ? -1 : in / block * bytes, " bytes; weight has ",
              weight.size(1), ". The checkpoint does not match its config.");
  Weight w{};
  w.fmt = fmt;
  w.in = in;
  w.out = weight.size(0);
  w.row_bytes = weight.size(1);
  return w;
}

Weight lut_weight(const at::Tensor& weight, const at::Tensor& absmax, const at::Tensor& code, int64_t out,
                  int64_t in) {
  check_u8(weight, "weight");
  TORCH_CHECK(weight.dim() == 2, "hfq: 4-bit weight must be [blocks, blocksize/2], got ", weight.sizes());
  TORCH_CHECK(absmax.scalar_type() == at::kFloat && absmax.numel() == weight.size(0),
              "hfq: absmax must be float32 [", weight.size(0), "], got ", absmax.scalar_type(), " ", absmax.sizes());
  TORCH_CHECK(code.scalar_type() == at::kFloat && code.numel() == 16, "hfq: code must be 16 float32 values");
  TORCH_CHECK(out * in <= weight.numel() * 2, "hfq: ", weight.numel() * 2, " codes cannot hold a ", out, "x", in,
              " weight");
  Weight w{};
  w.fmt = hfq_cpu::FMT_LUT4;
  w.bits = 4;
  w.group = weight.size(1) * 2;
  w.in = in;
  w.out = out;
  const auto c = code.contiguous();
  std::memcpy(w.lut, c.data_ptr<float>(), 16 * sizeof(float));
  return w;
}

// Keeps the contiguous copies alive while the raw pointers in Weight are used.
struct Held {
  at::Tensor w, scales, zeros, g_idx, absmax;
  void bind(Weight& W) const {
    W.w = w.data_ptr<uint8_t>();
    if (scales.defined()) W.scales = reinterpret_cast<const uint16_t*>(scales.data_ptr<at::Half>());
    if (zeros.defined()) W.zeros = zeros.data_ptr<uint8_t>();
    if (g_idx.defined()) W.g_idx = g_idx.data_ptr<int32_t>();
    if (absmax.defined()) W.absmax = absmax.data_ptr<float>();
  }
};

at::Tensor dequantize(const Weight& W, at::ScalarType dtype) {
  const int ot = out_type(dtype);
  auto out = at::empty({W.out, W.in}, at::TensorOptions().dtype(dtype));
  char* base = static_cast<char*>(out.data_ptr());
  const int64_t es = out.element_size();
  const Kernels* k = current();
  at::parallel_for(0, W.out, 16, [&](int64_t b, int64_t e) { k->dequant(W, b, e, base + b * W.in * es, ot); });
  return out;
}

// oneDNN runs bf16 matmuls on AMX or AVX512-BF16 several times faster than float32 ones; elsewhere they are slow.
bool bf16_matmul_is_fast() {
  static const bool fast = __builtin_cpu_supports("amx-bf16") || __builtin_cpu_supports("avx512bf16");
  return fast;
}

// y = x @ W.T + bias in x's dtype.
at::Tensor run_linear(const at::Tensor& x, const Weight& W, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.size(-1) == W.in, "hfq: x's last dim must be ", W.in, ", got ", x.size(-1));
  const auto dtype = x.scalar_type();
  out_type(dtype);
  auto shape = x.sizes().vec();
  shape.back() = W.out;
  const auto x2 = x.reshape({-1, W.in});
  const int64_t M = x2.size(0);
  at::Tensor y;
  const Kernels* k = current();
  if (M <= kGemvMaxRows) {
    const auto xf = x2.to(at::kFloat).contiguous();
    y = at::empty({M, W.out}, x.options().dtype(at::kFloat));
    if (M > 0) {
      hfq_cpu::Acts a{};
      a.m = (int)M;
      a.k = W.in;
      a.chunks = (W.in + 63) / 64;
      a.x = xf.data_ptr<float>();
      a.int8 = int8_acts();
      at::Tensor q, d, s;
      if (k->fast(W)) {
        q = at::empty({M, a.chunks, 64}, at::TensorOptions().dtype(at::kShort));
        d = at::empty({M, a.chunks}, at::TensorOptions().dtype(at::kFloat));
        s = at::empty({M, a.chunks, 32}, at::TensorOptions().dtype(at::kFloat));   // the widest use: qlinear.h
        a.q = q.data_ptr<int16_t>();
        a.d = d.data_ptr<float>();
        a.s16 = s.data_ptr<float>();
        k->prep(W, a);
      }
      float* yp = y.data_ptr<float>();
      // Grain: enough rows that a task streams a few hundred KB, so threads do not fight over cache lines of y.
      at::parallel_for(0, W.out, 32, [&](int64_t b, int64_t e) { k->gemv(W, a, b, e, yp); });
    }
    if (bias) y.add_(bias->to(at::kFloat));
    return y.to(dtype).reshape(shape);
  }
  // Prefill: tiles of output rows, dequantized to the compute dtype, each multiplied by torch.
  const auto cdt = dtype == at::kFloat && !bf16_matmul_is_fast() ? at::kFloat
                   : dtype == at::kHalf ? at::kHalf : at::kBFloat16;
  const int ot = out_type(cdt);
  const auto xc = x2.to(cdt).contiguous();
  y = at::empty({M, W.out}, x.options().dtype(cdt));
  const int64_t es = at::elementSize(cdt);
  // About 2 MB; at least 1024 rows where oneDNN runs 16-bit matmuls natively (AMX, AVX512_BF16): its bf16 matmul
  // of 512 x K by n rows took about 2x longer per row for n of 292-512 than for 256 or 768 and more, at K of 4096
  // and 14336 (2 threads, Intel AMX; docs/kernels.md). Elsewhere (float32 tiles, or 16-bit without native support)
  // unmeasured, so 2 MB.
  int64_t nt = (int64_t)(2 << 20) / (W.in * es);
  const int64_t least = cdt != at::kFloat && bf16_matmul_is_fast() ? 1024 : 64;
  nt = std::min<int64_t>(std::max<int64_t>(least, nt - nt % 16), W.out);
  // The tile and its product are reused across calls: fresh pages cost a fault each (about 2 GB/s here).
  thread_local at::Tensor tile_buf, prod_buf;
  if (!tile_buf.defined() || tile_buf.scalar_type() != cdt || tile_buf.numel() < nt * W.in)
    tile_buf = at::empty({nt * W.in}, at::TensorOptions().dtype(cdt));
  if (!prod_buf.defined() || prod_buf.scalar_type() != cdt || prod_buf.numel() < M * nt)
    prod_buf = at::empty({M * nt}, at::TensorOptions().dtype(cdt));
  for (int64_t n0 = 0; n0 < W.out; n0 += nt) {
    const int64_t n = std::min(nt, W.out - n0);
    char* tb = static_cast<char*>(tile_buf.data_ptr());
    at::parallel_for(0, n, 8, [&](int64_t b, int64_t e) {
      k->dequant(W, n0 + b, n0 + e, tb + b * W.in * es, ot);
    });
    auto prod = prod_buf.narrow(0, 0, M * n).view({M, n});
    at::mm_out(prod, xc, tile_buf.narrow(0, 0, n * W.in).view({n, W.in}).t());
    y.narrow(1, n0, n).copy_(prod);
  }
  if (bias) y.add_(bias->to(cdt));
  return y.to(dtype).reshape(shape);
}

// ---- ops ----

at::Tensor dequantize_int(const at::Tensor& weight, const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                          int64_t bits, at::ScalarType dtype, const std::optional<at::Tensor>& g_idx) {
  Weight W = int_weight(weight, scales, zeros, bits);
  Held h{weight.contiguous(), scales.contiguous()};
  if (zeros) h.zeros = zeros->contiguous();
  if (g_idx) {
    TORCH_CHECK(g_idx->scalar_type() == at::kInt && g_idx->numel() == W.in, "hfq: g_idx must be int32 [", W.in, "]");
    h.g_idx = g_idx->contiguous();
    const auto G = scales.size(1);
    TORCH_CHECK(h.g_idx.numel() == 0 || (h.g_idx.min().item<int32_t>() >= 0 && h.g_idx.max().item<int32_t>() < G),
                "hfq: g_idx values must be in [0, ", G, ")");
  }
  h.bind(W);
  return dequantize(W, dtype);
}

at::Tensor linear_int(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& zeros, int64_t bits, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& g_idx) {
  if (g_idx) {   // act-order without the layer's sorted copy: exact dequantization, then torch's matmul
    auto w = dequantize_int(weight, scales, zeros, bits, x.scalar_type(), g_idx);
    auto y = at::matmul(x, w.t());
    return bias ? y + bias->to(x.scalar_type()) : y;
  }
  Weight W = int_weight(weight, scales, zeros, bits);
  Held h{weight.contiguous(), scales.contiguous()};
  if (zeros) h.zeros = zeros->contiguous();
  h.bind(W);
  return run_linear(x, W, bias);
}

std::pair<int64_t, int64_t> shape2(at::IntArrayRef shape) {
  int64_t n = 1;
  for (auto s : shape) n *= s;
  if (shape.size() == 2) return {shape[0], shape[1]};
  return {1, n};
}

at::Tensor dequantize_4bit(const at::Tensor& weight, const at::Tensor& absmax, const at::Tensor& code,
                           at::IntArrayRef shape, at::ScalarType dtype) {
  const auto [out, in] = shape2(shape);
  Weight W = lut_weight(weight, absmax, code, out, in);
  Held h{weight.contiguous()};
  h.absmax = absmax.contiguous();
  h.bind(W);
  return dequantize(W, dtype).reshape(shape);
}

at::Tensor linear_4bit(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& absmax,
                       const at::Tensor& code, at::IntArrayRef shape, const std::optional<at::Tensor>& bias) {
  TORCH_CHECK(shape.size() == 2, "hfq: linear_4bit needs a 2-D shape, got ", shape);
  Weight W = lut_weight(weight, absmax, code, shape[0], shape[1]);
  Held h{weight.contiguous()};
  h.absmax = absmax.contiguous();
  h.bind(W);
  return run_linear(x, W, bias);
}

at::Tensor dequantize_8bit_blockwise(const at::Tensor& codes, const at::Tensor& absmax, const at::Tensor& code,
                                     int64_t blocksize) {
  check_u8(codes, "codes");
  TORCH_CHECK(blocksize > 0, "hfq: blocksize must be positive");
  const int64_t n = codes.numel(), nb = (n + blocksize - 1) / blocksize;
  TORCH_CHECK(absmax.scalar_type() == at::kFloat && absmax.numel() >= nb, "hfq: absmax must be float32 with ",
              nb, " blocks, got ", absmax.scalar_type(), " ", absmax.sizes());
  TORCH_CHECK(code.scalar_type() == at::kFloat && code.numel() == 256, "hfq: code must be 256 float32 values");
  const auto c = codes.contiguous();
  const auto a = absmax.contiguous();
  const auto t = code.contiguous();
  auto out = at::empty(codes.sizes(), codes.options().dtype(at::kFloat));
  const uint8_t* cp = c.data_ptr<uint8_t>();
  const float *ap = a.data_ptr<float>(), *tp = t.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, n, 4096, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) op[i] = tp[cp[i]] * ap[i / blocksize];
  });
  return out;
}

at::Tensor dequantize_ggml(const at::Tensor& weight, c10::string_view qtype, int64_t in, at::ScalarType dtype) {
  Weight W = ggml_weight(weight, qtype, in);
  Held h{weight.contiguous()};
  h.bind(W);
  return dequantize(W, dtype);
}

at::Tensor linear_ggml(const at::Tensor& x, const at::Tensor& weight, c10::string_view qtype, int64_t in,
                       const std::optional<at::Tensor>& bias) {
  Weight W = ggml_weight(weight, qtype, in);
  Held h{weight.contiguous()};
  h.bind(W);
  return run_linear(x, W, bias);
}

// Embedding lookups: decode only the rows asked for, each exactly as dequantize_* would.
at::Tensor gather_rows(const Weight& W, const at::Tensor& ids, at::ScalarType dtype) {
  TORCH_CHECK(!at::isFloatingType(ids.scalar_type()), "hfq: ids must be integers, got ", ids.scalar_type());
  const auto flat = ids.reshape({-1}).to(at::kLong).contiguous();
  const int64_t n = flat.numel();
  const int64_t* id = flat.data_ptr<int64_t>();
  for (int64_t i = 0; i < n; ++i)
    TORCH_CHECK_INDEX(id[i] >= 0 && id[i] < W.out, "hfq: token id ", id[i], " is out of range for an embedding "
                      "table of ", W.out, " rows");
  const int ot = out_type(dtype);
  auto sizes = ids.sizes().vec();
  sizes.push_back(W.in);
  auto out = at::empty(sizes, at::TensorOptions().dtype(dtype));
  char* base = static_cast<char*>(out.data_ptr());
  const int64_t es = out.element_size();
  const Kernels* k = current();
  at::parallel_for(0, n, 16, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) k->dequant(W, id[i], id[i] + 1, base + i * W.in * es, ot);
  });
  return out;
}

at::Tensor embedding_int(const at::Tensor& weight, const at::Tensor& scales, const std::optional<at::Tensor>& zeros,
                         int64_t bits, const at::Tensor& ids, at::ScalarType dtype) {
  Weight W = int_weight(weight, scales, zeros, bits);
  Held h{weight.contiguous(), scales.contiguous()};
  if (zeros) h.zeros = zeros->contiguous();
  h.bind(W);
  return gather_rows(W, ids, dtype);
}

at::Tensor embedding_ggml(const at::Tensor& weight, c10::string_view qtype, int64_t in, const at::Tensor& ids,
                          at::ScalarType dtype) {
  Weight W = ggml_weight(weight, qtype, in);
  Held h{weight.contiguous()};
  h.bind(W);
  return gather_rows(W, ids, dtype);
}

}  // namespace

TORCH_LIBRARY_IMPL(hfq, CPU, m) {
  m.impl("embedding_int", &embedding_int);
  m.impl("embedding_ggml", &embedding_ggml);
  m.impl("dequantize_int", &dequantize_int);
  m.impl("dequantize_4bit", &dequantize_4bit);
  m.impl("dequantize_8bit_blockwise", &dequantize_8bit_blockwise);
  m.impl("linear_int", &linear_int);
  m.impl("linear_4bit", &linear_4bit);
  m.impl("dequantize_ggml", &dequantize_ggml);
  m.impl("linear_ggml", &linear_ggml);
}

TORCH_LIBRARY_FRAGMENT(hfq_cpu, m) {
  m.def("isa() -> str", &isa);
  m.def("set_isa(str name) -> str", &set_isa);
  m.def("activations() -> str", &activations);
  m.def("set_activations(str name) -> str", &set_activations);
}
