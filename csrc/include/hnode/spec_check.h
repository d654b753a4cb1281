// Host-side validation of a FieldSpec table against the solve's sizes (the CPU and CUDA
// launchers call it before reading the table; it throws std::runtime_error with the mismatch).
#pragma once

#include <stdexcept>
#include <string>

#include "hnode/field.h"

namespace hnode {

inline void check_spec(const int* ints, long long n_ints, long long P, int D) {
  if (n_ints < SPEC_HEADER) throw std::runtime_error("FieldSpec ints too short");
  if (ints[HDR_VERSION] != 1)
    throw std::runtime_error("FieldSpec version " + std::to_string(ints[HDR_VERSION]) + " not supported");
  if (ints[HDR_D] != D)
    throw std::runtime_error("FieldSpec has D=" + std::to_string(ints[HDR_D]) + " but the state has " + std::to_string(D));
  if (ints[HDR_P] != P)
    throw std::runtime_error("FieldSpec expects " + std::to_string(ints[HDR_P]) + " params, got " + std::to_string(P));
  const long long need = SPEC_HEADER + (long long)SPEC_LAYER_COLS * ints[HDR_L] +
                         (long long)SPEC_TERM_COLS * ints[HDR_NTERMS] + ints[HDR_NIN] + ints[HDR_NOUT];
  if (need > n_ints) throw std::runtime_error("FieldSpec ints truncated");
  for (int l = 0; l < ints[HDR_L]; ++l) {
    const int act = ints[SPEC_HEADER + SPEC_LAYER_COLS * l + LCOL_ACT];
    if (act < ACT_IDENTITY || act > ACT_SIGMOID)
      throw std::runtime_error("FieldSpec layer " + std::to_string(l) + " has unknown activation code " + std::to_string(act));
  }
}

}  // namespace hnode
