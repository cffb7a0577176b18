#!/bin/sh
# Runs each cmocka test binary given as an argument, shows its output, and
# ends with one line "unit: N passed, N failed" counting test cases summed
# over all binaries.  A binary that exits non-zero without reporting a
# failed case (a crash, a sanitizer abort) counts as one failed case.
# Exits non-zero if anything failed.

passed=0
failed=0
broken=""
out=$(mktemp) || exit 1
trap 'rm -f "$out"' EXIT INT TERM

# count WORD: the sum of N over cmocka's "[  WORD  ] N test(s)" lines
count() {
    grep -o "\[  $1  \] [0-9][0-9]* test" "$out" | awk '{s += $4} END {print s + 0}'
}

for t in "$@"; do
    echo "== $t"
    "$t" >"$out" 2>&1
    rc=$?
    cat "$out"
    echo

    p=$(count PASSED)
    f=$(count FAILED)

    if [ "$rc" -ne 0 ] && [ "$f" -eq 0 ]; then
        f=1
    fi

    if [ "$f" -ne 0 ]; then
        broken="$broken $(basename "$t")"
    fi

    passed=$((passed + p))
    failed=$((failed + f))
done

if [ -n "$broken" ]; then
    echo "failing:$broken"
fi

echo "unit: $passed passed, $failed failed"

[ "$failed" -eq 0 ]
