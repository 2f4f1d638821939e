#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# memtrail's overhead benchmark against BCC memleak: one command, see bench/README.md.
# The harness is bench/run.py (python3, standard library only); every option passes through:
#   bench/run.sh                       # 3 interleaved rounds, appends to bench/RESULTS.md
#   bench/run.sh --quick               # CI smoke run: 100k steps, 1 round, no BCC, no record
#   bench/run.sh --build build-bench --tools untraced,bcc --rounds 5
exec /usr/bin/env python3 "$(dirname "$(readlink -f "$0")")/run.py" "$@"
