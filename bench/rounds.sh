# SPDX-License-Identifier: Apache-2.0
# Sourced by the interleaved-rounds benchmarks (mmap_cost.sh, python_frames.sh): reads
# [--build DIR] [--rounds N] into $build and $rounds, sets $memtrail, and makes $work, a
# directory removed at exit together with any job still running.
build=build rounds=3
while (($#)); do
  case $1 in
    --build) build=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: $0 [--build DIR] [--rounds N]" >&2; exit 2 ;;
  esac
done
memtrail=$build/memtrail
[[ -x $memtrail ]] || { echo "$(basename "$0"): build first (scripts/build.sh)" >&2; exit 1; }
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
