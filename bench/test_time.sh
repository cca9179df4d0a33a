#!/usr/bin/env bash
# Fresh-clone test time, side by side: for each "COMMIT=COMMAND" argument, clones this
# repository at COMMIT into a temporary folder (its own target/, nothing cached but the
# crates.io downloads) and times COMMAND there. Run on an idle machine; compare runs of
# the same invocation only.
#   bash bench/test_time.sh "e0f61d4=cargo test" "HEAD=cargo test --features cuda-sim"
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
printf '%-12s %8s %8s %8s  %s\n' commit wall_s user_s sys_s command
for spec in "$@"; do
  commit="${spec%%=*}"
  cmd="${spec#*=}"
  dir="$work/$(echo "$commit" | tr -c 'A-Za-z0-9\n' _)"
  git clone -q "$repo" "$dir"
  git -C "$dir" checkout -q "$commit"
  # Fetch the crates first so the timing is compile + run only.
  (cd "$dir" && cargo fetch -q)
  start=$(date +%s.%N)
  /usr/bin/time -f '%U %S' -o "$work/time" bash -c "cd '$dir' && $cmd" >"$work/log" 2>&1 ||
    { echo "$commit: '$cmd' failed, log:"; tail -30 "$work/log"; exit 1; }
  wall=$(echo "$(date +%s.%N) - $start" | bc)
  read -r user sys <"$work/time"
  printf '%-12s %8.1f %8.1f %8.1f  %s\n' "$commit" "$wall" "$user" "$sys" "$cmd"
  grep -h "^test result" "$work/log" | awk '{n += $4} END {print "  tests passed:", n}'
  rm -rf "$dir"
done
