#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Formats memtrail's C and C++ sources with clang-format (.clang-format: Google style at 100
# columns; bpf/.clang-format: kernel style). --check changes nothing and fails, naming the files,
# when any file is not formatted: the test command runs it. Usage: scripts/format.sh [--check]
set -euo pipefail
cd "$(dirname "$0")/.."
command -v clang-format >/dev/null ||
  { echo "format: clang-format is missing: run scripts/install-deps.sh" >&2; exit 1; }
mapfile -t files < <(git ls-files -co --exclude-standard -- '*.c' '*.h' '*.cpp' | sort)
if [[ ${1:-} == --check ]]; then
  unformatted=()
  for file in "${files[@]}"; do
    [[ -f $file ]] || continue
    clang-format --dry-run --Werror "$file" >/dev/null 2>&1 || unformatted+=("$file")
  done
  if ((${#unformatted[@]})); then
    echo "format: ${#unformatted[@]} files are not formatted (run scripts/format.sh):" >&2
    printf '  %s\n' "${unformatted[@]}" >&2
    exit 1
  fi
  echo "format: ${#files[@]} files formatted"
  exit 0
fi
# Only files that need it are rewritten: clang-format -i writes every file it is given, and a
# newer mtime on an unchanged source makes the benchmarks call the built memtrail stale.
rewritten=0
for file in "${files[@]}"; do
  [[ -f $file ]] || continue
  clang-format --dry-run --Werror "$file" >/dev/null 2>&1 && continue
  clang-format -i "$file"
  rewritten=$((rewritten + 1))
done
echo "format: ${#files[@]} files checked, $rewritten rewritten"
