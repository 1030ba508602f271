#!/usr/bin/env bash
# `cmake --install` then a separate CMake project (examples/mlp_adamw: the README's
# "use it in your loop" program) that does find_package(ckptledger), builds and runs.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
# The wall: exactly the public headers (include/ckptledger/*.h) are installed, nothing internal.
installed="$(cd "$tmp/prefix/include" && find . -type f | sort)"
public="$(cd "$src/include" && find . -type f -name '*.h' | sort)"
if [ "$installed" != "$public" ]; then
  echo "installed headers differ from include/ckptledger/:"
  diff <(echo "$public") <(echo "$installed") || true
  exit 1
fi
# Each public header compiles alone against the installed tree (no internal header reached).
torch_inc="$(dirname "$(find /usr/include /usr/lib -path '*ATen/core/Tensor.h' -print -quit)")"
for h in $public; do
  echo "#include <${h#./}>" | c++ -std=c++17 -fsyntax-only -x c++ - -I"$tmp/prefix/include" \
    -I"${torch_inc%/ATen/core}" -I"${torch_inc%/ATen/core}/torch/csrc/api/include" \
    || { echo "public header $h does not compile on its own"; exit 1; }
done
cmake -S "$src/examples/mlp_adamw" -B "$tmp/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_EXE_LINKER_FLAGS=-fuse-ld=lld >/dev/null
cmake --build "$tmp/consumer" >/dev/null
cd "$tmp"
out="$("$tmp/consumer/mlp_adamw" "$tmp/work_dirs/mlp_adamw")"
echo "$out" | tail -3
echo "$out" | grep -q '"best_score"' || { echo "no best score in the output"; exit 1; }
test -f "$tmp/work_dirs/mlp_adamw/ckptledger.sqlite" || { echo "no ledger"; exit 1; }
test -f "$tmp/work_dirs/mlp_adamw/epoch_5.pth" || { echo "no epoch_5.pth"; exit 1; }
ls "$tmp"/work_dirs/mlp_adamw/epoch_5-*.pth >/dev/null || { echo "nothing published"; exit 1; }
# A second run resumes from the ledger and has nothing left to train.
out2="$("$tmp/consumer/mlp_adamw" "$tmp/work_dirs/mlp_adamw")"
echo "$out2" | grep -q 'Saving checkpoint' && { echo "the second run trained again"; exit 1; }
echo "install test: ok"
