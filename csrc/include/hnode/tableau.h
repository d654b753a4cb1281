// Dormand-Prince 5(4) Butcher tableau, identical to scipy.integrate.RK45
// (scipy/integrate/_ivp/rk.py): same shapes, same rational constants, each constant
// written as a double-precision quotient (correctly rounded, as Python's `/` does).
//
//   C  (6)     nodes of stages 0..5 (stage 6, the FSAL stage, is at c = 1)
//   A  (6x5)   A[i][j]: weight of k_j in the input of stage i (row 0 is all zero)
//   B  (6)     5th-order weights; they are also the inputs of the FSAL stage 6
//   E  (7)     error weights: err = h * sum_i E[i] * k_i  (i = 0..6, k_6 = f(t+h, y_new))
//   P  (7x4)   dense output: y(t + theta h) = y + h * sum_i k_i * sum_j P[i][j] theta^(j+1)
//
// Usable from host and device code: DP5<T>::a(i, j) etc. are constexpr HNODE_HD functions
// (no ODR-use of static arrays in device code). DP5Table holds the same values as plain
// static constexpr double arrays for host code (bindings, tests).
#pragma once

#include "hnode/macros.h"

HNODE_NAMESPACE_BEGIN

struct DP5Table {
  static constexpr int n_stages = 6;
  static constexpr int n_stages_extended = 7;  // incl. the FSAL stage
  static constexpr int order = 5;
  static constexpr int error_estimator_order = 4;
  static constexpr int n_dense = 4;  // columns of P (interpolant degree 4 in theta)

  static constexpr double C[6] = {0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0};

  static constexpr double A[6][5] = {
      {0.0, 0.0, 0.0, 0.0, 0.0},
      {1.0 / 5.0, 0.0, 0.0, 0.0, 0.0},
      {3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0},
      {44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0},
      {19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0, 0.0},
      {9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0},
  };

  static constexpr double B[6] = {35.0 / 384.0,     0.0,         500.0 / 1113.0,
                                  125.0 / 192.0,    -2187.0 / 6784.0, 11.0 / 84.0};

  static constexpr double E[7] = {-71.0 / 57600.0, 0.0,           71.0 / 16695.0, -71.0 / 1920.0,
                                  17253.0 / 339200.0, -22.0 / 525.0, 1.0 / 40.0};

  static constexpr double P[7][4] = {
      {1.0, -8048581381.0 / 2820520608.0, 8663915743.0 / 2820520608.0,
       -12715105075.0 / 11282082432.0},
      {0.0, 0.0, 0.0, 0.0},
      {0.0, 131558114200.0 / 32700410799.0, -68118460800.0 / 10900136933.0,
       87487479700.0 / 32700410799.0},
      {0.0, -1754552775.0 / 470086768.0, 14199869525.0 / 1410260304.0,
       -10690763975.0 / 1880347072.0},
      {0.0, 127303824393.0 / 49829197408.0, -318862633887.0 / 49829197408.0,
       701980252875.0 / 199316789632.0},
      {0.0, -282668133.0 / 205662961.0, 2019193451.0 / 616988883.0,
       -1453857185.0 / 822651844.0},
      {0.0, 40617522.0 / 29380423.0, -110615467.0 / 29380423.0, 69997945.0 / 29380423.0},
  };
};

// Scalar-typed accessors, constexpr and callable from host and device. With constant
// (unrolled) indices they fold to immediates. T = float rounds the double constants once.
template <typename T>
struct DP5 {
  static constexpr int n_stages = DP5Table::n_stages;
  static constexpr int n_stages_extended = DP5Table::n_stages_extended;
  static constexpr int order = DP5Table::order;
  static constexpr int error_estimator_order = DP5Table::error_estimator_order;
  static constexpr int n_dense = DP5Table::n_dense;

  HNODE_HD static constexpr T c(int i) {
    constexpr double v[6] = {0.0, 1.0 / 5.0, 3.0 / 10.0, 4.0 / 5.0, 8.0 / 9.0, 1.0};
    return static_cast<T>(v[i]);
  }

  HNODE_HD static constexpr T a(int i, int j) {
    constexpr double v[6][5] = {
        {0.0, 0.0, 0.0, 0.0, 0.0},
        {1.0 / 5.0, 0.0, 0.0, 0.0, 0.0},
        {3.0 / 40.0, 9.0 / 40.0, 0.0, 0.0, 0.0},
        {44.0 / 45.0, -56.0 / 15.0, 32.0 / 9.0, 0.0, 0.0},
        {19372.0 / 6561.0, -25360.0 / 2187.0, 64448.0 / 6561.0, -212.0 / 729.0, 0.0},
        {9017.0 / 3168.0, -355.0 / 33.0, 46732.0 / 5247.0, 49.0 / 176.0, -5103.0 / 18656.0},
    };
    return static_cast<T>(v[i][j]);
  }

  HNODE_HD static constexpr T b(int i) {
    constexpr double v[6] = {35.0 / 384.0,  0.0,         500.0 / 1113.0,
                             125.0 / 192.0, -2187.0 / 6784.0, 11.0 / 84.0};
    return static_cast<T>(v[i]);
  }

  HNODE_HD static constexpr T e(int i) {
    constexpr double v[7] = {-71.0 / 57600.0,    0.0,           71.0 / 16695.0, -71.0 / 1920.0,
                             17253.0 / 339200.0, -22.0 / 525.0, 1.0 / 40.0};
    return static_cast<T>(v[i]);
  }

  HNODE_HD static constexpr T p(int i, int j) {
    constexpr double v[7][4] = {
        {1.0, -8048581381.0 / 2820520608.0, 8663915743.0 / 2820520608.0,
         -12715105075.0 / 11282082432.0},
        {0.0, 0.0, 0.0, 0.0},
        {0.0, 131558114200.0 / 32700410799.0, -68118460800.0 / 10900136933.0,
         87487479700.0 / 32700410799.0},
        {0.0, -1754552775.0 / 470086768.0, 14199869525.0 / 1410260304.0,
         -10690763975.0 / 1880347072.0},
        {0.0, 127303824393.0 / 49829197408.0, -318862633887.0 / 49829197408.0,
         701980252875.0 / 199316789632.0},
        {0.0, -282668133.0 / 205662961.0, 2019193451.0 / 616988883.0,
         -1453857185.0 / 822651844.0},
        {0.0, 40617522.0 / 29380423.0, -110615467.0 / 29380423.0, 69997945.0 / 29380423.0},
    };
    return static_cast<T>(v[i][j]);
  }
};

// Compile-time checks that the two copies agree and the tableau is consistent.
namespace detail {
constexpr bool dp5_copies_agree() {
  for (int i = 0; i < 6; ++i) {
    if (DP5<double>::c(i) != DP5Table::C[i] || DP5<double>::b(i) != DP5Table::B[i]) return false;
    for (int j = 0; j < 5; ++j)
      if (DP5<double>::a(i, j) != DP5Table::A[i][j]) return false;
  }
  for (int i = 0; i < 7; ++i) {
    if (DP5<double>::e(i) != DP5Table::E[i]) return false;
    for (int j = 0; j < 4; ++j)
      if (DP5<double>::p(i, j) != DP5Table::P[i][j]) return false;
  }
  return true;
}
}  // namespace detail
static_assert(detail::dp5_copies_agree(), "DP5 and DP5Table disagree");

HNODE_NAMESPACE_END  // namespace hnode
