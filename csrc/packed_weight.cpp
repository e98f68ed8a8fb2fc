#include "packed_weight.h"

#include "jit_conv.h"

#include <stdexcept>

namespace prunecal {
namespace {

void check_compressed(const std::vector<int32_t>& indptr, const std::vector<int32_t>& cols,
                      int64_t n_rows, int64_t n_cols) {
  if (int64_t(indptr.size()) != n_rows + 1)
    throw std::invalid_argument("indptr: expected " + std::to_string(n_rows + 1) + " entries, got " +
                                std::to_string(indptr.size()));
  if (indptr[0] != 0 || int64_t(indptr.back()) != int64_t(cols.size()))
    throw std::invalid_argument("indptr: must start at 0 and end at nnz");
  for (int64_t r = 0; r < n_rows; ++r) {
    if (indptr[r + 1] < indptr[r]) throw std::invalid_argument("indptr: must be non-decreasing");
    for (int32_t j = indptr[r]; j < indptr[r + 1]; ++j) {
      if (cols[j] < 0 || cols[j] >= n_cols) throw std::invalid_argument("indices: column out of range");
      if (j > indptr[r] && cols[j] <= cols[j - 1])
        throw std::invalid_argument("indices: must be strictly increasing within a row");
    }
  }
}

}  // namespace

PackedWeight::PackedWeight(const std::string& kind, std::vector<float> values,
                           std::vector<int32_t> indptr, std::vector<int32_t> indices,
                           std::array<int, 4> shape, int block_rows)
    : kind_(kind), shape_(shape), block_rows_(block_rows) {
  for (int s : shape)
    if (s <= 0) throw std::invalid_argument("shape: all dims must be positive");
  const int64_t K = cols();
  if (K >= (int64_t(1) << 31)) throw std::invalid_argument("shape: K too large");
  if (kind == "csr") {
    if (values.size() != indices.size())
      throw std::invalid_argument("values/indices: lengths differ");
    check_compressed(indptr, indices, rows(), K);
    c_val_ = std::move(values);
    c_indptr_ = std::move(indptr);
    c_cols_ = std::move(indices);
    block_rows_ = 1;
  } else if (kind == "bsr") {
    if (block_rows != 4 && block_rows != 8) throw std::invalid_argument("block_rows: must be 4 or 8");
    const int64_t nbr = (rows() + block_rows - 1) / block_rows;
    if (values.size() != indices.size() * size_t(block_rows))
      throw std::invalid_argument("values: expected n_blocks * block_rows entries");
    check_compressed(indptr, indices, nbr, K);
    b_val_ = std::move(values);
    b_indptr_ = std::move(indptr);
    b_cols_ = std::move(indices);
    // CSR view without the zeros (used for grouped convs whose groups split a block, and
    // as the base of the dense fallback)
    std::vector<std::vector<std::pair<int32_t, float>>> rowsv(rows());
    for (int64_t br = 0; br < nbr; ++br)
      for (int32_t j = b_indptr_[br]; j < b_indptr_[br + 1]; ++j)
        for (int i = 0; i < block_rows; ++i) {
          const float v = b_val_[size_t(j) * block_rows + i];
          const int64_t row = br * block_rows + i;
          if (v != 0.f || v != v) {
            if (row >= rows()) throw std::invalid_argument("values: padding rows must be zero");
            rowsv[row].emplace_back(b_cols_[j], v);
          }
        }
    c_indptr_.assign(1, 0);
    for (auto& r : rowsv) {
      for (auto& [c, v] : r) {
        c_cols_.push_back(c);
        c_val_.push_back(v);
      }
      c_indptr_.push_back(int32_t(c_cols_.size()));
    }
  } else {
    throw std::invalid_argument("kind: expected 'csr' or 'bsr', got '" + kind + "'");
  }
}

std::shared_ptr<Geometry> PackedWeight::geometry(int H, int W, int stride, int pad, int dil) {
  const auto key = std::make_tuple(H, W, stride, pad, dil);
  std::lock_guard<std::mutex> lk(mutex_);
  auto it = geoms_.find(key);
  if (it != geoms_.end()) return it->second;
  auto g = std::make_shared<Geometry>();
  g->H = H, g->W = W, g->stride = stride, g->pad = pad, g->dil = dil;
  const int64_t Hp = int64_t(H) + 2 * int64_t(pad), Wp = int64_t(W) + 2 * int64_t(pad);
  const int64_t Ho = (Hp - int64_t(dil) * (kh() - 1) - 1) / stride + 1;
  const int64_t Wo = (Wp - int64_t(dil) * (kw() - 1) - 1) / stride + 1;
  if (Hp - int64_t(dil) * (kh() - 1) - 1 < 0 || Wp - int64_t(dil) * (kw() - 1) - 1 < 0)
    throw std::invalid_argument("input: padded input (" + std::to_string(Hp) + "x" + std::to_string(Wp) +
                                ") smaller than the dilated kernel");
  g->Hq = int((Hp + stride - 1) / stride);
  g->Wq = int((Wp + stride - 1) / stride);
  g->Ho = int(Ho), g->Wo = int(Wo);
  g->chan_floats = int64_t(stride) * stride * g->Hq * g->Wq;
  const int64_t plane_total = g->chan_floats * cin_per_group();
  if (plane_total + kSlack >= (int64_t(1) << 31) || Ho * Wo >= (int64_t(1) << 31))
    throw std::invalid_argument("input: image too large for 32-bit offsets");
  // slots: 8 consecutive output pixels; whole-image runs when the planes have no extra columns
  if (g->Wq == g->Wo && stride == 1) {
    const int64_t P = Ho * Wo;
    for (int64_t q = 0; q < P; q += kLanes) g->slots.push_back({int32_t(q), int32_t(q), int32_t(std::min<int64_t>(kLanes, P - q))});
  } else {
    for (int64_t oy = 0; oy < Ho; ++oy)
      for (int64_t ox = 0; ox < Wo; ox += kLanes)
        g->slots.push_back({int32_t(oy * g->Wq + ox), int32_t(oy * Wo + ox), int32_t(std::min<int64_t>(kLanes, Wo - ox))});
  }
  // offset of every kernel tap inside one channel's phase planes
  g->tap.resize(size_t(kh()) * kw());
  const int64_t phase = int64_t(g->Hq) * g->Wq;
  for (int ky = 0; ky < kh(); ++ky)
    for (int kx = 0; kx < kw(); ++kx) {
      const int a = ky * dil, b = kx * dil;
      g->tap[ky * kw() + kx] =
          int32_t(((a % stride) * stride + (b % stride)) * phase + (a / stride) * int64_t(g->Wq) + b / stride);
    }
  g = geometry_from(std::move(g));
  if (geoms_.size() >= 64) geoms_.clear();  // bounded cache
  geoms_.emplace(key, g);
  return g;
}

std::shared_ptr<Geometry> PackedWeight::geometry_from(std::shared_ptr<Geometry> g) const {
  const int taps = kh() * kw();
  if (int(g->tap.size()) != taps) throw std::invalid_argument("geometry: tap table has the wrong size");
  auto off_of = [&](int32_t col) {
    const int64_t off = int64_t(col / taps) * g->chan_floats + g->tap[col % taps];
    if (off >= (int64_t(1) << 31) || off < -(int64_t(1) << 31))
      throw std::invalid_argument("input: image too large for 32-bit offsets");
    return int32_t(off);
  };
  g->csr_off.resize(c_cols_.size());
  for (size_t j = 0; j < c_cols_.size(); ++j) g->csr_off[j] = off_of(c_cols_[j]);
  g->bsr_off.resize(b_cols_.size());
  for (size_t j = 0; j < b_cols_.size(); ++j) g->bsr_off[j] = off_of(b_cols_[j]);
  return g;
}

std::shared_ptr<JitConv> PackedWeight::make_jit(const Geometry& g, const std::vector<Slot>& slots, int64_t out_plane,
                                                const int32_t* res_q, int64_t res_plane) const {
  JitLayout L;
  if (kind_ != "csr" || !JitConv::available() || !JitConv::tile_layout(slots, res_q, &L)) return nullptr;
  L.out_plane = out_plane;
  L.res_plane = res_q ? res_plane : 0;
  L.plane_outputs = int64_t(g.Ho) * g.Wo;
  return JitConv::build(c_indptr_.data(), c_cols_.data(), c_val_.data(), g.csr_off.data(), rows(), L);
}

const JitConv* PackedWeight::jit(Geometry& g) const {
  std::call_once(g.jit_once, [&] { g.jit = make_jit(g, g.slots, int64_t(g.Ho) * g.Wo, nullptr, 0); });
  return g.jit.get();
}

void PackedWeight::ensure_dense(Geometry& g) const {
  std::call_once(g.dense_once, [&] {
    const int64_t K = cols();
    if (int64_t(rows()) * K >= (int64_t(1) << 31))
      throw std::invalid_argument("x: NaN/Inf input needs the dense weight, too large for this layer");
    const int taps = kh() * kw();
    g.dense_val.assign(size_t(rows()) * K, 0.f);
    for (int r = 0; r < rows(); ++r)
      for (int32_t j = c_indptr_[r]; j < c_indptr_[r + 1]; ++j) g.dense_val[size_t(r) * K + c_cols_[j]] = c_val_[j];
    g.dense_indptr.resize(size_t(rows()) + 1);
    for (int r = 0; r <= rows(); ++r) g.dense_indptr[r] = int32_t(int64_t(r) * K);
    std::vector<int32_t> row_off(K);
    for (int64_t k = 0; k < K; ++k) row_off[k] = int32_t((k / taps) * g.chan_floats + g.tap[k % taps]);
    g.dense_off.resize(size_t(rows()) * K);
    for (int r = 0; r < rows(); ++r) std::copy(row_off.begin(), row_off.end(), g.dense_off.begin() + size_t(r) * K);
  });
}

}  // namespace prunecal
