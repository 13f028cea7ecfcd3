// Host/device-shared per-element logic of the log-bin descriptor (SEMANTICS.md §4).
//
// Bin order for hierarchy h: for level k in 0..h-1, dy in (-3^k, 0, 3^k) (outer), dx likewise (inner),
// skipping (0, 0) for k > 0. Level k reads the 3^k x 3^k box average (valid-count normalised, i.e.
// AvgPool2d(3^k, 1, 3^k // 2, count_include_pad=False)) at the per-coordinate clamped cell.
#pragma once

#include "dtype_common.cuh"

// Most log-bin levels (hierarchy) any implementation accepts: the public limit (dinofeat.kernels.dispatch reads it as
// MAX_HIERARCHY), the size of the C++ bin-offset table, and one past the highest box level (3^11 cells) a level map
// is made for. 3^11 keeps every cell offset far inside 32 bits.
#define DF_LOG_BIN_MAX_LEVELS 12

namespace dinofeat {

struct BinOffset {
  int level;  // k: box width 3^k
  int dy;     // row offset in cells
  int dx;     // column offset in cells
};

DF_HD inline int pow3(int k) {
  int s = 1;
  for (int i = 0; i < k; ++i) s *= 3;
  return s;
}

DF_HD inline int num_bins(int hierarchy) { return 1 + 8 * hierarchy; }

// Radius of the level-k box: 3^k // 2 (0 for level 0).
DF_HD inline int box_radius(int level) { return pow3(level) / 2; }

// bin index (0 .. num_bins-1) -> (level, dy, dx).
DF_HD inline BinOffset bin_offset(int bin) {
  BinOffset o;
  if (bin < 9) {
    o.level = 0;
    o.dy = bin / 3 - 1;
    o.dx = bin % 3 - 1;
    return o;
  }
  const int r = bin - 9;
  o.level = 1 + r / 8;
  int j = r % 8;
  if (j >= 4) j += 1;  // skip the centre of the 3x3 pattern
  const int s = pow3(o.level);
  o.dy = (j / 3 - 1) * s;
  o.dx = (j % 3 - 1) * s;
  return o;
}

// Clamped (replicate-padded) neighbour coordinate.
DF_HD inline int clamped(int v, int offset, int n) { return clamp_i(v + offset, 0, n - 1); }

// First and last in-range index of the box [c - radius, c + radius] on an axis of length n.
DF_HD inline int box_lo(int c, int radius) { return max_i(c - radius, 0); }
DF_HD inline int box_hi(int c, int radius, int n) { return min_i(c + radius, n - 1); }

// Number of in-range cells of the box of `radius` centred on (y, x) in an hp x wp grid.
DF_HD inline int box_count(int y, int x, int radius, int hp, int wp) {
  return (box_hi(y, radius, hp) - box_lo(y, radius) + 1) * (box_hi(x, radius, wp) - box_lo(x, radius) + 1);
}

}  // namespace dinofeat
