#!/usr/bin/env bash
# The independent llama.cpp oracles the tests compare hfq with: llama-quantize, llama-imatrix and llama-perplexity,
# built from the llama-cpp-python sdist the test extra pins, plus that sdist's llama.cpp tree (convert_hf_to_gguf.py).
# Built once per version into the hfq cache; later runs reuse it. Prints the HFQ_LLAMA_* exports on stdout:
#     eval "$(bash .ci/llama_tools.sh)"
set -euo pipefail
cd "$(dirname "$0")/.."
VERSION=$(grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | cut -d= -f3)
ROOT="${HFQ_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/hfq}/llama.cpp-$VERSION"
TOOLS=(llama-quantize llama-imatrix llama-perplexity)
PYTHON=${PYTHON:-python3}

built() {
  for t in "${TOOLS[@]}"; do [ -x "$ROOT/bin/$t" ] || return 1; done
  [ -f "$ROOT/src/convert_hf_to_gguf.py" ]
}

if built; then
  echo "llama.cpp $VERSION tools: cached in $ROOT" >&2
else
  t0=$(date +%s)
  mkdir -p "$(dirname "$ROOT")"
  work=$(mktemp -d "$ROOT.tmp-XXXXXX")
  trap 'rm -rf "$work"' EXIT
  echo "llama.cpp $VERSION tools: building into $ROOT (about 5 minutes on 2 cores) ..." >&2
  "$PYTHON" -m pip download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$work" >&2
  tar xzf "$work/llama_cpp_python-$VERSION.tar.gz" -C "$work"
  mv "$work/llama_cpp_python-$VERSION/vendor/llama.cpp" "$work/src"
  # static binaries: the cache holds them without the build tree
  cmake -S "$work/src" -B "$work/build" -DCMAKE_BUILD_TYPE=Release -DBUILD_SHARED_LIBS=OFF -DLLAMA_CURL=OFF \
      -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF >"$work/cmake.log" 2>&1 || { cat "$work/cmake.log" >&2; exit 1; }
  cmake --build "$work/build" -j"$(nproc)" --target "${TOOLS[@]}" >>"$work/cmake.log" 2>&1 \
      || { tail -50 "$work/cmake.log" >&2; exit 1; }
  mkdir -p "$work/bin"
  for t in "${TOOLS[@]}"; do cp "$work/build/bin/$t" "$work/bin/"; done
  rm -rf "$work/build" "$work/llama_cpp_python-$VERSION" "$work"/*.tar.gz "$work/cmake.log"
  chmod 755 "$work"
  rm -rf "$ROOT"
  mv "$work" "$ROOT"
  trap - EXIT
  echo "llama.cpp $VERSION tools: built in $(( $(date +%s) - t0 )) s" >&2
fi
echo "export HFQ_LLAMA_QUANTIZE=$ROOT/bin/llama-quantize"
echo "export HFQ_LLAMA_IMATRIX=$ROOT/bin/llama-imatrix"
echo "export HFQ_LLAMA_PERPLEXITY=$ROOT/bin/llama-perplexity"
echo "export HFQ_LLAMA_CPP_SRC=$ROOT/src"
