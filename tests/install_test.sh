#!/usr/bin/env bash
# `cmake --install` then a separate CMake project (tests/install_consumer: the README's
# "use it in your loop" program) that does find_package(ckptledger), builds and runs.
# Usage: install_test.sh BUILD_DIR SOURCE_DIR
set -euo pipefail
build="$1"; src="$2"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cmake --install "$build" --prefix "$tmp/prefix" >/dev/null
cmake -S "$src/tests/install_consumer" -B "$tmp/consumer" -G Ninja \
  -DCMAKE_PREFIX_PATH="$tmp/prefix" -DCMAKE_EXE_LINKER_FLAGS=-fuse-ld=lld >/dev/null
cmake --build "$tmp/consumer" >/dev/null
cd "$tmp"
out="$("$tmp/consumer/my_training" "$tmp/work_dirs/my_exp")"
echo "$out" | tail -3
echo "$out" | grep -q '"best_score"' || { echo "no best score in the output"; exit 1; }
test -f "$tmp/work_dirs/my_exp/ckptledger.sqlite" || { echo "no ledger"; exit 1; }
test -f "$tmp/work_dirs/my_exp/epoch_5.pth" || { echo "no epoch_5.pth"; exit 1; }
ls "$tmp"/work_dirs/my_exp/epoch_5-*.pth >/dev/null || { echo "nothing published"; exit 1; }
# A second run resumes from the ledger and has nothing left to train.
out2="$("$tmp/consumer/my_training" "$tmp/work_dirs/my_exp")"
echo "$out2" | grep -q 'Saving checkpoint' && { echo "the second run trained again"; exit 1; }
echo "install test: ok"
