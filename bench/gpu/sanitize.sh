#!/bin/bash
# compute-sanitizer memcheck and racecheck over the parity tests (small cases).
out=${1:-.}
T=./cuda_point
CS=$(command -v compute-sanitizer || ls /usr/local/cuda/bin/compute-sanitizer 2>/dev/null)
for tool in memcheck racecheck; do
  for t in fps_and_knn preprocess_and_alignment group_encoder; do
    MIAD_SANITIZE=1 timeout 40 "$CS" --tool $tool --error-exitcode 9 $T --test-threads=1 \
      $t > "$out/$tool-$t.log" 2>&1
    echo "$tool $t exit $? : $(grep 'ERROR SUMMARY\|RACECHECK SUMMARY\|test result' "$out/$tool-$t.log" | tr '\n' ' ')"
  done
done
