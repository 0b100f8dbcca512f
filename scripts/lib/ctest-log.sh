# shellcheck shell=bash
# Sourced by scripts/test and scripts/sanitize. ctest_phase runs ctest with the output kept in
# $CTEST_LOG as well; ctest_failures prints the failed tests and their gtest/sanitizer failure
# lines again, at the very end, where a log that is cut in the middle (CI keeps its head and its
# tail) still shows why a test failed.
CTEST_LOG=$(mktemp)
trap 'rm -f "$CTEST_LOG"' EXIT
ctest_phase() { ctest --output-on-failure --timeout 600 "$@" 2>&1 | tee -a "$CTEST_LOG"; }
ctest_failures() {
  echo "=== failures (again, from the output above)"
  grep -E '\*\*\*(Failed|Timeout|Exception)' "$CTEST_LOG" || true
  grep -E -A6 ': Failure$|ERROR: AddressSanitizer|WARNING: ThreadSanitizer|runtime error:' \
    "$CTEST_LOG" | head -n 120 || true
}
