# Build-speed helpers (CI builds four trees from scratch on 2 cores).
#
# tests_<label> targets: every gtest binary carrying <label> (plus what it depends on), so a
# stage builds exactly what `ctest -L <label>` runs (scripts/sanitize: tests_unit tests_etcd).
#
# DISCOVERY_PCH: one precompiled header (gRPC, protobuf + the generated etcd API, gtest/gmock,
# absl, nlohmann/json, spdlog) compiled once by a donor target and reused by every gtest binary
# with the default LINK (the full library); the library gets its own.

set(DISCOVERY_PCH_LIBRARY_HEADERS
  <grpcpp/grpcpp.h> <google/protobuf/message.h> <etcd/etcdserverpb/rpc.grpc.pb.h>
  <nlohmann/json.hpp> <spdlog/spdlog.h> <absl/status/statusor.h> <absl/strings/str_cat.h>
  <absl/synchronization/mutex.h> <absl/time/time.h>
  <atomic> <condition_variable> <functional> <map> <memory> <mutex> <optional> <string>
  <thread> <vector>)
set(DISCOVERY_PCH_TEST_HEADERS ${DISCOVERY_PCH_LIBRARY_HEADERS} <gtest/gtest.h> <gmock/gmock.h>)

function(discovery_library_pch target)
  if(DISCOVERY_PCH)
    target_precompile_headers(${target} PRIVATE ${DISCOVERY_PCH_LIBRARY_HEADERS})
  endif()
endfunction()

# The donor: an executable compiled exactly like a default-LINK gtest binary.
function(discovery_test_pch_donor)
  if(NOT DISCOVERY_PCH)
    return()
  endif()
  set(src ${CMAKE_CURRENT_BINARY_DIR}/discovery_test_pch.cc)
  if(NOT EXISTS ${src})
    file(WRITE ${src} "int main() { return 0; }\n")
  endif()
  add_executable(discovery_test_pch EXCLUDE_FROM_ALL ${src})
  target_link_libraries(discovery_test_pch PRIVATE discovery_internal discovery_test_support
    discovery_warnings GTest::gtest GTest::gmock GTest::gtest_main)
  target_precompile_headers(discovery_test_pch PRIVATE ${DISCOVERY_PCH_TEST_HEADERS})
endfunction()

function(discovery_test_build_speed name link labels)
  foreach(label IN LISTS labels)
    if(NOT TARGET tests_${label})
      add_custom_target(tests_${label})
    endif()
    add_dependencies(tests_${label} ${name})
  endforeach()
  if(DISCOVERY_PCH AND "${link}" STREQUAL "discovery_internal;discovery_test_support")
    target_precompile_headers(${name} REUSE_FROM discovery_test_pch)
  endif()
endfunction()
