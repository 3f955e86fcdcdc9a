#!/usr/bin/env bash
# The vattn CI gate: profile a fixed set of settings on the base commit and on this tree, compare.
#
#   examples/ci/compare.sh [BASE_REF]      # default: origin/main
#
# Writes OUT (default runs/ci-compare): base/roundN.csv and current/roundN.csv (one file per
# round), compare.md (the report), compare.csv (every comparison). Appends the report to
# $GITHUB_STEP_SUMMARY when that is set. Exits as `vattn compare` does: 0 no regression,
# 1 a regression, 2 bad input (or a profile run that failed).
#
# The base commit's code is exported with `git archive` (the repository is not touched) and run
# from that copy with this environment's dependencies. The two sides alternate, ROUNDS times
# (base, change, base, change, ...), each round a fresh process: `vattn compare` judges each round
# on its own, takes the median round per setting and pools the samples for the U test, so one run
# disturbed by a busy runner moves nothing. Within a run, profile times a fixed reference workload
# (plain torch, no vattn code) after every timed step, and the gate judges the step's CPU time in
# units of that reference (`--clock auto`): a runner that got slower between the two sides slows
# both, and cancels. Timing uses --threads 1 (the CPU time of one thread is the step's work) and
# --samples (the U test). A base commit whose profile predates the reference (or --samples) is
# judged on the wall clock, and the report's notes say so: expect that noise on the first run.
# Settings run for about 5 ms or more: near 1 ms a fresh process's timing varies by tens of percent.
set -euo pipefail

BASE_REF="${1:-origin/main}"
OUT="${OUT:-runs/ci-compare}"
ROUNDS="${ROUNDS:-3}"
PYTHON="${PYTHON:-python}"
# Extra vattn compare flags, e.g. VATTN_COMPARE_FLAGS="--fail-on latency_ms:+15% --strict"
read -r -a COMPARE_FLAGS <<< "${VATTN_COMPARE_FLAGS:-}"
# The fixed settings (6: three schemes at 8x64 and 8x96) and how they are measured.
read -r -a SETTINGS <<< "${VATTN_SETTINGS:---model tiny --scheme space,joint,divided --frames 8 --size 64,96}"
COMMON=(--threads 1 --quiet)

rm -rf "$OUT"
mkdir -p "$OUT/base" "$OUT/current" "$OUT/base-src"
OUT="$(cd "$OUT" && pwd)"  # absolute: the runs below start in their own source tree
git archive "$BASE_REF" | tar -x -C "$OUT/base-src"
BASE_SRC="$OUT/base-src"
HERE="$PWD"

vattn_at() {  # vattn_at SRC ARGS...: run vattn from the source tree SRC (python -m puts the
  local src="$1"; shift  # working folder first on sys.path, ahead of an editable install)
  (cd "$src" && PYTHONPATH="$src${PYTHONPATH:+:$PYTHONPATH}" "$PYTHON" -m vattn_cli "$@")
}

samples_flag() {  # --samples where that tree's profile has it
  if vattn_at "$1" profile --help 2>/dev/null | grep -q -- "--samples"; then echo "--samples"; fi
}
BASE_SAMPLES="$(samples_flag "$BASE_SRC")"
CURRENT_SAMPLES="$(samples_flag "$HERE")"

for ((round = 0; round < ROUNDS; round++)); do
  echo "round $((round + 1))/$ROUNDS: profiling $BASE_REF" >&2
  vattn_at "$BASE_SRC" profile "${SETTINGS[@]}" "${COMMON[@]}" $BASE_SAMPLES --csv "$OUT/base/round$round.csv"
  echo "round $((round + 1))/$ROUNDS: profiling this tree" >&2
  vattn_at "$HERE" profile "${SETTINGS[@]}" "${COMMON[@]}" $CURRENT_SAMPLES --csv "$OUT/current/round$round.csv"
done

status=0
vattn_at "$HERE" compare "$OUT/base" "$OUT/current" --markdown "$OUT/compare.md" --csv "$OUT/compare.csv" \
  "${COMPARE_FLAGS[@]}" || status=$?

if [[ -n "${GITHUB_STEP_SUMMARY:-}" && -f "$OUT/compare.md" ]]; then
  cat "$OUT/compare.md" >> "$GITHUB_STEP_SUMMARY"
fi
exit "$status"
