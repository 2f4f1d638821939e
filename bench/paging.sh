#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# memtrail paging's cost per page fault: one command, see bench/README.md, "Paging cost".
# The harness is bench/paging_cost.py (python3, standard library only); every option passes through:
#   bench/paging.sh                         # 7 interleaved rounds, appends to bench/RESULTS.md
#   bench/paging.sh --quick                 # smoke run: 1 round, short runs, no record
#   bench/paging.sh --build build-dev --rounds 3
exec /usr/bin/env python3 "$(dirname "$(readlink -f "$0")")/paging_cost.py" "$@"
