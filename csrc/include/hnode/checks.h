// Input checks on host memory for hnode_fast.odeint's eager validation (host only).
// Each is one pass over raw values; Python calls them with data_ptr()s of contiguous CPU
// tensors instead of composing several torch ops (tens of microseconds per call otherwise).
#pragma once

#include <cmath>
#include <cstring>

namespace hnode {
namespace checks {

// true when none of the n values at p is NaN or +-inf
template <class T>
inline bool all_finite(const T* p, long long n) {
  bool ok = true;
  for (long long i = 0; i < n; ++i) ok &= std::isfinite(p[i]);  // no early exit: vectorises
  return ok;
}

// true when each of the B rows of T values at p (row-major, contiguous) is strictly
// increasing; NaN anywhere makes it false
inline bool rows_increasing(const double* p, long long B, long long T) {
  bool ok = true;
  for (long long b = 0; b < B; ++b) {
    const double* r = p + b * T;
    for (long long j = 1; j < T; ++j) ok &= r[j] > r[j - 1];
  }
  return ok;
}

// true when the n values at a and b are equal elementwise (floating: by value, so NaN is
// never equal and -0 == +0, as torch.equal; other types: by bytes)
template <class T>
inline bool equal_values(const T* a, const T* b, long long n) {
  bool ok = true;
  for (long long i = 0; i < n; ++i) ok &= a[i] == b[i];
  return ok;
}

inline bool equal_bytes(const void* a, const void* b, long long nbytes) {
  return nbytes <= 0 || std::memcmp(a, b, (size_t)nbytes) == 0;
}

}  // namespace checks
}  // namespace hnode
