// SPDX-License-Identifier: Apache-2.0
// The Go target of the integration tests (tests/targets/CMakeLists.txt builds it).
module memtrail/go_grow

go 1.19
