#!/usr/bin/env bash
# GPU verification of hnode_fast's CUDA and Triton backends in one short, budgeted run on an
# H100/H200 (issue 18): build (or take a prebuilt module), test, sanitize, benchmark.
#
#   bash benchmarks/gpu_check.sh          # from the project root; results in $OUT (default /tmp/gpucheck_out)
#
# Support files: benchmarks/gpu/ (manual_build.sh, gpu_extra.py, sanitize_case.py, ncu_case.py);
# an optional prebuilt module benchmarks/gpu/prebuilt/_C<EXT_SUFFIX> + SOURCE_HASH (git-ignored:
# build it on the CPU machine for the GPU machine's python to save the ~2-4 min compile there).
#
# Budget: GPU_CHECK_BUDGET seconds in all (default 500). Every step has its own timeout and the
# script goes on after a failure. Phase A runs the correctness work concurrently (Triton test
# shards, the CUDA tests once per register-cap build, compute-sanitizer memcheck + racecheck in
# the background; gpu_extra's checks in the foreground); phase B runs the timing work alone on
# the GPU (profile, bench_cuda mlp/pk/float64, Nsight Compute, bench_triton).
# Results: $OUT/SUMMARY.txt (one line per step), $OUT/*.log, $OUT/*.xml (junit), $OUT/*.csv,
# $OUT/gpu_extra.json, $OUT/profile_*.txt.
# Knobs: PYTHON, OUT, GPU_CHECK_BUDGET, GPUCHECK_SHARDS (Triton test processes, default 10),
#        GPUCHECK_PHASE_B (seconds kept for phase B, default 200), GPUCHECK_SKIP (step names),
#        CUDA_HOME.
set -u -o pipefail
set -x
GC=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/gpu
ROOT=$(pwd)
OUT=${OUT:-/tmp/gpucheck_out}
mkdir -p "$OUT"
BUDGET=${GPU_CHECK_BUDGET:-500}
T0=$(date +%s)
SUMMARY=$OUT/SUMMARY.txt
: > "$SUMMARY"
PY=${PYTHON:-$(command -v python3 || command -v python)}
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export PATH="$PATH:$CUDA_HOME/bin"
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/gpucheck_triton_cache}
export HNODE_TEST_SEED=${HNODE_TEST_SEED:-20240601}
export OUT
unset TRITON_INTERPRET
SKIP=" ${GPUCHECK_SKIP:-} "
NSH=${GPUCHECK_SHARDS:-10}
PHASE_B_RESERVE=${GPUCHECK_PHASE_B:-200}   # seconds kept for the timing steps (phase B)

now() { date +%s; }
left() { echo $((BUDGET - ($(now) - T0))); }
note() { echo "$*" | tee -a "$SUMMARY"; }
# step NAME TIMEOUT MIN_LEFT CMD... : runs CMD with a timeout, logs to $OUT/NAME.log, records rc
step() {
  local name=$1 to=$2 minleft=$3
  shift 3
  if [[ "$SKIP" == *" $name "* ]]; then note "SKIP $name (GPUCHECK_SKIP)"; return 0; fi
  local l
  l=$(left)
  if [ "$l" -lt "$minleft" ]; then note "SKIP $name (only ${l}s left)"; return 0; fi
  [ "$to" -gt "$l" ] && to=$l
  local s
  s=$(now)
  timeout -k 10 "$to" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  note "$name rc=$rc secs=$(($(now) - s))$([ $rc = 124 ] && echo ' TIMEOUT')"
  tail -n 15 "$OUT/$name.log" | cut -c1-400
  return 0
}
# bg NAME TIMEOUT CMD... : background job with its own timeout; pid recorded in BG_PIDS
BG_PIDS=()
BG_NAMES=()
bg() {
  local name=$1 to=$2
  shift 2
  if [[ "$SKIP" == *" $name "* ]]; then note "SKIP $name (GPUCHECK_SKIP)"; return 0; fi
  (
    s=$(now)
    timeout -k 10 "$to" "$@" > "$OUT/$name.log" 2>&1
    rc=$?
    echo "$name rc=$rc secs=$(($(now) - s))$([ $rc = 124 ] && echo ' TIMEOUT') (background)" >> "$SUMMARY"
  ) &
  BG_PIDS+=($!)
  BG_NAMES+=("$name")
}

# ------------------------------------------------------------------------------------ 0. environment
{
  echo "date: $(date -u)"; echo "root: $ROOT"; echo "python: $PY"
  nvidia-smi || true
  nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,clocks.sm,power.limit,mig.mode.current --format=csv || true
  command -v nvcc && nvcc --version | tail -2
  command -v compute-sanitizer || ls "$CUDA_HOME/bin/compute-sanitizer" || true
  command -v cmake ninja g++ cuobjdump || true
  "$PY" -c "import sys, torch; print(sys.version); print('torch', torch.__version__, torch.version.cuda, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '-')"
  "$PY" -c "import triton; print('triton', triton.__version__)" || true
  "$PY" -c "import torchdiffeq; print('torchdiffeq', torchdiffeq.__version__)" || true
  "$PY" -c "import pytest; print('pytest', pytest.__version__)" || true
  "$PY" -c "import sysconfig; print('EXT_SUFFIX', sysconfig.get_config_var('EXT_SUFFIX')); print('include', sysconfig.get_paths()['include'])"
  nproc; free -g | head -2
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt" | head -40

# ------------------------------------------------------------------------------------ 1. pytest
if ! "$PY" -c "import pytest" 2>/dev/null; then
  "$PY" -m pip install --no-index --find-links "$GC/wheels-pytest" pytest > "$OUT/pip_pytest.log" 2>&1
  note "pytest installed from carried wheels rc=$?"
fi

# ------------------------------------------------------------------------------------ 2. the extension
EXT=$("$PY" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
SRC_HASH=$(find csrc CMakeLists.txt -type f | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-64)
verify_ext() {
  "$PY" - <<'EOF'
import hnode_fast as hf
from hnode_fast import _native
from hnode_fast.backends import cuda as hcuda
bi = hf.build_info()
print({k: bi.get(k) for k in ("cuda", "cuda_archs", "cuda_compiler", "cuda_device_count", "extension_path")})
assert bi["cuda"] and hcuda.is_available(), hcuda.unavailable_reason()
EOF
}
EXT_OK=0
BUILD_ARCHS=""
if [ -f "$GC/prebuilt/_C$EXT" ] && [ "$(cat "$GC/prebuilt/SOURCE_HASH" 2>/dev/null)" = "$SRC_HASH" ]; then
  cp "$GC/prebuilt/_C$EXT" "hnode_fast/_C$EXT"
  if verify_ext > "$OUT/ext_prebuilt.log" 2>&1; then EXT_OK=1; BUILD_ARCHS=$(cat "$GC/prebuilt/ARCHS" 2>/dev/null); note "extension: prebuilt _C$EXT (archs ${BUILD_ARCHS:-80;90}) OK"; else note "extension: prebuilt failed to load (see ext_prebuilt.log)"; rm -f "hnode_fast/_C$EXT"; fi
  cat "$OUT/ext_prebuilt.log"
else
  note "extension: no matching prebuilt (python ext $EXT, source hash $SRC_HASH vs $(cat "$GC/prebuilt/SOURCE_HASH" 2>/dev/null))"
fi
if [ $EXT_OK = 0 ] && [[ "$SKIP" != *" build_manual "* ]]; then
  step build_manual 420 60 bash "$GC/manual_build.sh" "$PY" 90
  if verify_ext > "$OUT/ext_manual.log" 2>&1; then EXT_OK=1; BUILD_ARCHS=90; note "extension: manual nvcc build OK"; fi
  cat "$OUT/ext_manual.log"
fi
if [ $EXT_OK = 0 ] && [[ "$SKIP" != *" build_skbuild "* ]]; then
  # scikit-build-core route (needs cmake; carried wheels: benchmarks/gpu/wheels, benchmarks/gpu/wheels-cmake)
  WH="--no-index --find-links $GC/wheels --find-links $GC/wheels-cmake"
  PKGS="scikit-build-core pybind11"
  command -v cmake > /dev/null || PKGS="$PKGS cmake"
  command -v ninja > /dev/null || PKGS="$PKGS ninja"
  "$PY" -m pip install $WH $PKGS > "$OUT/pip_build_deps.log" 2>&1
  rm -rf /tmp/gpucheck_wheel
  HNODE_CUDA=ON HNODE_CUDA_ARCHS=90 step build_skbuild 420 60 "$PY" -m pip wheel --no-build-isolation --no-deps --no-index . -w /tmp/gpucheck_wheel
  "$PY" - "$EXT" <<'EOF'
import glob, sys, zipfile
for w in glob.glob("/tmp/gpucheck_wheel/hnode_fast-*.whl"):
    z = zipfile.ZipFile(w)
    for n in z.namelist():
        if n == "hnode_fast/_C" + sys.argv[1]:
            open("hnode_fast/_C" + sys.argv[1], "wb").write(z.read(n))
            print("extracted", n)
EOF
  if verify_ext > "$OUT/ext_skbuild.log" 2>&1; then EXT_OK=1; BUILD_ARCHS=90; note "extension: scikit-build OK"; fi
  cat "$OUT/ext_skbuild.log"
fi
[ $EXT_OK = 1 ] || note "extension: NOT AVAILABLE - CUDA steps will fail/skip; Triton steps still run"
[ -n "$BUILD_ARCHS" ] && export HNODE_CUDA_ARCHS=$BUILD_ARCHS   # test_build_info expects {80,90} otherwise
command -v cuobjdump > /dev/null && cuobjdump --dump-resource-usage "hnode_fast/_C$EXT" 2>&1 | grep -E "Function|REG|STACK" | c++filt > "$OUT/resource_usage.txt" || true

PHASE_A_END=$((T0 + BUDGET - PHASE_B_RESERVE))
a_left() { local x=$((PHASE_A_END - $(now))); [ $x -lt 30 ] && x=30; echo $x; }
mn() { [ "$1" -lt "$2" ] && echo "$1" || echo "$2"; }

# ------------------------------------------------------------------------------------ 3. background jobs
# 3a. Triton tests, sharded (JIT compiles ~83 kernel specialisations: ~8-10 CPU-minutes serially)
"$PY" -m pytest --collect-only -q -p no:cacheprovider tests/triton 2> /dev/null | grep "::" | grep -v "test_triton_aot" > "$OUT/triton_ids.txt"
note "triton tests collected: $(wc -l < "$OUT/triton_ids.txt") (test_triton_aot excluded: host-side AOT, covered by the real JIT)"
for i in $(seq 0 $((NSH - 1))); do
  mapfile -t IDS < <(awk -v n="$NSH" -v i="$i" 'NR % n == i' "$OUT/triton_ids.txt")
  # -v: per-test lines survive a timeout (the junit file is written only at the end)
  [ ${#IDS[@]} -gt 0 ] && bg "triton_shard$i" "$(($(a_left) + 60))" "$PY" -m pytest -v -p no:cacheprovider -rfE --junitxml="$OUT/triton_shard$i.xml" "${IDS[@]}"
done
# 3b. compile warm-up of bench_triton's kernels (B=32 keeps the same specialisations as B=1e4/1e5)
bg triton_bench_warm "$(a_left)" bash -c "'$PY' benchmarks/bench_triton.py --B 32 --B-eval 32; '$PY' benchmarks/bench_triton.py --B 32 --B-eval 32 --tf32"
# 3c. compute-sanitizer (slow kernels; results, not timing)
SAN=$(command -v compute-sanitizer || echo "$CUDA_HOME/bin/compute-sanitizer")
if [ -x "$SAN" ] && [ $EXT_OK = 1 ]; then
  san_chain() {
    export PYTORCH_NO_CUDA_MEMORY_CACHING=1
    local common="--error-exitcode 9 --print-limit 40"
    # only the extension's kernels (names contain the namespace "hnode"): faster, no torch noise
    "$SAN" --help 2>&1 | grep -q -- "--kernel-name" && common="$common --kernel-name kns=hnode"
    "$SAN" --version | tail -1
    echo "== memcheck"; timeout -k 5 150 "$SAN" --tool memcheck --leak-check no $common "$PY" "$GC/sanitize_case.py"; echo "memcheck rc=$?"
    echo "== racecheck"; timeout -k 5 100 "$SAN" --tool racecheck --racecheck-report hazard $common "$PY" "$GC/sanitize_case.py" quick; echo "racecheck rc=$?"
  }
  bg sanitizer "$(a_left)" bash -c "$(declare -f san_chain); SAN='$SAN' PY='$PY' GC='$GC'; san_chain"
else
  note "SKIP sanitizer (compute-sanitizer not found at $SAN or no extension)"
fi

# ------------------------------------------------------------------------------------ 4. foreground correctness
for m in 1 6; do
  bg "cuda_tests_minb$m" "$(a_left)" env HNODE_CUDA_MINB=$m "$PY" -m pytest -q -p no:cacheprovider -rfEs --junitxml="$OUT/cuda_tests_minb$m.xml" tests/test_cuda_backend.py
done
step cuda_tests "$(mn 240 "$(a_left)")" 40 "$PY" -m pytest -q -p no:cacheprovider -rfEs --junitxml="$OUT/cuda_tests.xml" tests/test_cuda_backend.py
step gpu_extra_correct "$(mn 200 "$(a_left)")" 40 "$PY" "$GC/gpu_extra.py" correct

# ------------------------------------------------------------------------------------ 5. wait for phase A
for k in "${!BG_PIDS[@]}"; do
  wait "${BG_PIDS[$k]}" 2> /dev/null
done
note "phase A done at $(($(now) - T0))s"
grep -h -E "(FAILED|ERROR)|passed|failed" "$OUT"/triton_shard*.log 2> /dev/null | grep -v PASSED | cut -c1-300 | tail -n 40
grep -h -E "ERROR SUMMARY|rc=|Invalid|Race|Uninitialized|sanitize_case" "$OUT/sanitizer.log" 2> /dev/null | head -n 40

# ------------------------------------------------------------------------------------ 6. phase B: timing, alone on the GPU
step gpu_extra_timing 60 40 "$PY" "$GC/gpu_extra.py" timing
step bench_cuda_mlp 150 60 "$PY" benchmarks/bench_cuda.py --problem mlp --minb 1,4,6 --batches 100,10000,100000,1000000 --csv "$OUT/bench_cuda_mlp.csv"
step bench_cuda_pk 90 40 "$PY" benchmarks/bench_cuda.py --problem pk --batches 100,10000,100000,1000000 --csv "$OUT/bench_cuda_pk.csv"
step bench_cuda_f64 60 30 "$PY" benchmarks/bench_cuda.py --problem mlp --dtype float64 --batches 10000,100000 --quick --csv "$OUT/bench_cuda_f64.csv"
NCU=$(command -v ncu || echo "$CUDA_HOME/bin/ncu")
if [ -x "$NCU" ] && [ $EXT_OK = 1 ]; then
  step ncu 60 40 "$NCU" --clock-control none --kernel-name regex:"solve_kernel|adjoint_kernel|reduce_partials" --launch-count 3 \
    --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats --section MemoryWorkloadAnalysis \
    "$PY" "$GC/ncu_case.py" 100000
else
  note "SKIP ncu (not found)"
fi
step bench_triton 60 30 "$PY" benchmarks/bench_triton.py --csv "$OUT/bench_triton.csv"
step bench_triton_tf32 60 30 "$PY" benchmarks/bench_triton.py --tf32 --csv "$OUT/bench_triton_tf32.csv"
step gpu_extra_triton 40 25 "$PY" "$GC/gpu_extra.py" triton
nvidia-smi --query-gpu=clocks.sm,clocks.max.sm,temperature.gpu,power.draw,clocks_throttle_reasons.active --format=csv > "$OUT/gpu_clocks_end.txt" 2>&1 || true

# ------------------------------------------------------------------------------------ 7. summary
"$PY" - "$OUT" <<'EOF' | tee -a "$SUMMARY"
import glob, os, sys, xml.etree.ElementTree as ET
out = sys.argv[1]
tot = {}
for f in sorted(glob.glob(os.path.join(out, "*.xml"))):
    try:
        r = ET.parse(f).getroot()
        suites = [r] if r.tag == "testsuite" else list(r)
        key = "triton" if "triton_shard" in f else os.path.basename(f)[:-4]
        t = tot.setdefault(key, [0, 0, 0, 0, []])
        for s in suites:
            t[0] += int(s.get("tests", 0)); t[1] += int(s.get("failures", 0)); t[2] += int(s.get("errors", 0)); t[3] += int(s.get("skipped", 0))
            for c in s.iter("testcase"):
                if c.find("failure") is not None or c.find("error") is not None:
                    t[4].append(c.get("classname", "") + "::" + c.get("name", ""))
    except Exception as e:
        print("could not parse", f, e)
for k, (n, fa, er, sk, bad) in tot.items():
    print(f"junit {k}: {n} tests, {fa} failed, {er} errors, {sk} skipped")
    for b in bad[:30]:
        print("   FAIL", b)
EOF
note "total $(($(now) - T0))s"
cat "$SUMMARY"
