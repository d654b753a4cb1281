#!/usr/bin/env bash
# Build hnode_fast/_C<EXT_SUFFIX> in place with nvcc + g++ directly (no CMake / scikit-build-core).
# Mirrors CMakeLists.txt: CPU sources -O3 -ffp-contract=off -fno-trapping-math (+ -mavx2 -mfma for
# kernels_avx2.cpp, kernels_avx512.cpp), OpenMP, CUDA sources --expt-relaxed-constexpr -lineinfo, static cudart.
# Usage: bash benchmarks/gpu/manual_build.sh [PYTHON] [ARCHS (default 90)]  -- run from the project root.
set -euo pipefail
PY=${1:-python3}
ARCHS=${2:-${HNODE_CUDA_ARCHS:-90}}
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(pwd)
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
NVCC=${NVCC:-$(command -v nvcc || echo "$CUDA_HOME/bin/nvcc")}
CUDA_LIB=$(dirname "$(dirname "$(readlink -f "$NVCC")")")/lib64
[ -d "$CUDA_LIB" ] || CUDA_LIB=$CUDA_HOME/lib64
[ -f "$CUDA_LIB/libcudart_static.a" ] || CUDA_LIB=$(dirname "$(find / -name libcudart_static.a 2>/dev/null | head -1)")
PYINC=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
EXT=$($PY -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
[ -f "$PYINC/Python.h" ] || { echo "manual_build: no Python.h under $PYINC"; exit 3; }
PB=${PYBIND11_INCLUDE:-}
if [ -z "$PB" ]; then
  PB=$($PY -c "import pybind11; print(pybind11.get_include())" 2>/dev/null || true)
fi
if [ -z "$PB" ] || [ ! -f "$PB/pybind11/pybind11.h" ]; then
  W=$(ls "$HERE"/wheels/pybind11-*.whl | head -1)
  mkdir -p /tmp/hnode_pybind11 && $PY -m zipfile -e "$W" /tmp/hnode_pybind11
  PB=/tmp/hnode_pybind11/pybind11/include
fi
B=/tmp/hnode_manual_build; rm -rf "$B"; mkdir -p "$B"
CSV=$(echo "$ARCHS" | tr ';' ',')
GENCODE=""; for a in $(echo "$ARCHS" | tr ',;' '  '); do GENCODE="$GENCODE -gencode arch=compute_$a,code=[compute_$a,sm_$a]"; done
NV_VER=$("$NVCC" --version | sed -n 's/.*release \([0-9.]*\), V\([0-9.]*\).*/\2/p')
GXX_VER=$(g++ -dumpfullversion)
DEFS=(-DHNODE_WITH_CUDA=1 "-DHNODE_CUDA_ARCHS=\"$CSV\"" "-DHNODE_CUDA_COMPILER_VERSION=\"$NV_VER\"" "-DHNODE_CXX_COMPILER=\"GNU $GXX_VER\"" -DHNODE_WITH_OPENMP=1)
INC=(-I"$ROOT/csrc/include" -I"$PB" -I"$PYINC")
CXX=(g++ -O3 -std=c++17 -fPIC -fvisibility=hidden "${INC[@]}" "${DEFS[@]}" -fopenmp)
set -x
"${CXX[@]}" -c csrc/bindings.cpp -o "$B/bindings.o" &
"${CXX[@]}" -ffp-contract=off -fno-trapping-math -c csrc/cpu/solve_cpu.cpp -o "$B/solve_cpu.o" &
"${CXX[@]}" -ffp-contract=off -fno-trapping-math -c csrc/cpu/kernels_base.cpp -o "$B/kernels_base.o" &
"${CXX[@]}" -ffp-contract=off -fno-trapping-math -mavx2 -mfma -c csrc/cpu/kernels_avx2.cpp -o "$B/kernels_avx2.o" &
"${CXX[@]}" -ffp-contract=off -fno-trapping-math -mavx2 -mfma -mavx512f -mavx512dq -mavx512vl -c csrc/cpu/kernels_avx512.cpp -o "$B/kernels_avx512.o" &
"${CXX[@]}" -c csrc/cpu/peak.cpp -o "$B/peak.o" &
"${CXX[@]}" -ffp-contract=off -fno-trapping-math -c csrc/cpu/kernels_gpuloops.cpp -o "$B/kernels_gpuloops.o" &
for s in solve_cuda bind_cuda device_info; do
  "$NVCC" -std=c++17 -O3 --expt-relaxed-constexpr -lineinfo $GENCODE -Xcompiler -fPIC,-fvisibility=hidden \
    "${INC[@]}" "${DEFS[@]}" -c "csrc/cuda/$s.cu" -o "$B/$s.o" &
done
fail=0; for j in $(jobs -p); do wait "$j" || fail=1; done
[ "$fail" = 0 ] || { echo "manual_build: a compile failed"; exit 4; }
g++ -shared -o "hnode_fast/_C$EXT" "$B"/*.o -L"$CUDA_LIB" -lcudart_static -ldl -lrt -lpthread -fopenmp
set +x
echo "manual_build: wrote hnode_fast/_C$EXT"
