#!/usr/bin/env bash
# The closing line of `make test`: N passed, N failed, N skipped, with every skipped
# test named and why.
#
# cargo's harness knows passed, failed and ignored. An `#[ignore = "why"]` test is a
# skip; so is a test that ran no body because this machine cannot run it: such a test
# calls `airlock_tests::skip(why)`, which appends `binary<TAB>test<TAB>why` to the skip
# log, and cargo counted it as passed, so it moves from passed to skipped here.
#
# Usage: test-summary.sh CARGO_TEST_OUTPUT SKIP_LOG
set -euo pipefail
out=$1 skips=$2
[ -f "$skips" ] || : > "$skips"
awk -v skips="$skips" '
  BEGIN {
    FS = "\t"
    while ((getline line < skips) > 0) { split(line, r, "\t"); runtime[++n] = r[1] " " r[2] ": " r[3] }
    FS = " "
  }
  # "     Running tests/layers.rs (target/debug/deps/layers-0123abcd)" names the binary.
  /^ *Running / { bin = $0; sub(/.*\//, "", bin); sub(/-[0-9a-f]+\)$/, "", bin) }
  /^ *Doc-tests / { bin = $2 " (doc-tests)" }
  /^test .* \.\.\. ignored/ {
    name = $0; sub(/^test /, "", name); why = name
    sub(/ \.\.\. ignored.*/, "", name)
    if (why ~ / \.\.\. ignored, /) sub(/.* \.\.\. ignored, /, "", why); else why = "no reason given"
    ignored[++m] = bin " " name ": " why
  }
  /^test result:/ {
    k = split($0, w, /[ ;]+/)
    for (i = 1; i < k; i++) {
      if (w[i+1] == "passed") p += w[i]
      if (w[i+1] == "failed") f += w[i]
      if (w[i+1] == "ignored") ig += w[i]
    }
  }
  END {
    for (i = 1; i <= m; i++) print "skipped: " ignored[i]
    for (i = 1; i <= n; i++) print "skipped: " runtime[i]
    if (ig != m) { print "cargo counted " ig " ignored tests but named " m; f++ }
    printf "%d passed, %d failed, %d skipped\n", p - n, f, ig + n
    exit (f > 0 || p - n <= 0)
  }
' "$out"
