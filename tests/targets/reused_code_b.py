# SPDX-License-Identifier: Apache-2.0
# Module B of python_reused_code.py: its <module> code keeps 1000 bytes(600), then is freed.
import sys

CODE_ID = id(sys._getframe().f_code)
KEPT = []
for _ in range(1000):
    KEPT.append(bytes(600))  # line: module_b
