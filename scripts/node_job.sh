#!/usr/bin/env bash
# Long work on a leased GPU node whose commands are capped (e.g. 10 minutes a call, the machine kept while calls follow
# each other): the job runs detached, so it outlives the call that started it, and each later call waits on it and
# brings back its logs. docs/OFFLINE.md, "A 30-minute lease", gives the learning proof's calls.
#
#   bash scripts/node_job.sh start NAME CMD [ARG...]     # CMD detached (own session), output in $JOBS/NAME.log
#   bash scripts/node_job.sh wait NAME SECONDS [PATH...]  # until the job ends or SECONDS pass, then its log's tail;
#                                                         # with $OUT set, the log and PATHs go to $OUT/NAME.tgz
#                                                         # (in parts NAME.tgz.partNN of PART_BYTES when larger)
#   bash scripts/node_job.sh status NAME                  # running | exit code N | not started
#
# The environment of the starting shell is the job's (source the sim bundle's activate.sh first). Starting a NAME that
# is still running is refused; one that ended is started again (stage scripts resume from their own files).
# Settings: JOBS (default outputs/jobs), TAIL (log lines shown, default 15), PART_BYTES (default 15 MiB: a lease that
# brings back files of at most 16 MiB each; rejoin with `cat NAME.tgz.part* > NAME.tgz`), MAX_BYTES (default 60 MiB:
# one that brings back 64 MiB a call; PATHs are packed in the order given while they fit, the rest named for later).
set -euo pipefail
cd "$(dirname "$0")/.."
JOBS=${JOBS:-outputs/jobs}
TAIL=${TAIL:-15}
PART_BYTES=${PART_BYTES:-15728640}
MAX_BYTES=${MAX_BYTES:-62914560}

usage() { sed -n 6,10p "$0" | sed 's/^# *//' >&2; exit 2; }

running() {  # $1 = name: true while its process group lives
  [ -f "$JOBS/$1.pid" ] && kill -0 "$(cat "$JOBS/$1.pid")" 2>/dev/null
}

state() {
  if running "$1"; then echo running
  elif [ -f "$JOBS/$1.rc" ]; then echo "exit code $(cat "$JOBS/$1.rc")"
  elif [ -f "$JOBS/$1.pid" ]; then echo "ended without an exit code (killed?)"
  else echo "not started"
  fi
}

start() {
  local name=$1
  shift
  [ $# -gt 0 ] || usage
  mkdir -p "$JOBS"
  if running "$name"; then
    echo "job $name is still running (pid $(cat "$JOBS/$name.pid")): wait on it, or kill -- -\$(cat $JOBS/$name.pid)" >&2
    exit 1
  fi
  rm -f "$JOBS/$name.rc"
  echo "== $(date -u +%FT%TZ) start: $*" >> "$JOBS/$name.log"
  # setsid: a session of its own, so the end of the calling command (and its process group) does not end the job
  setsid nohup bash -c 'started=$SECONDS; "$@"; rc=$?; echo "== $(date -u +%FT%TZ) exit code $rc after $((SECONDS - started)) s"; echo $rc > "$0"' \
    "$JOBS/$name.rc" "$@" >> "$JOBS/$name.log" 2>&1 < /dev/null &
  echo $! > "$JOBS/$name.pid"
  echo "job $name started (pid $!), log $JOBS/$name.log"
}

wait_job() {
  local name=$1 seconds=$2 until=$((SECONDS + $2))
  shift 2
  [ -f "$JOBS/$name.pid" ] || { echo "job $name was never started here ($JOBS/$name.pid missing)" >&2; exit 1; }
  while running "$name" && [ "$SECONDS" -lt "$until" ]; do sleep 5; done
  echo "job $name: $(state "$name") (waited up to $seconds s)"
  tail -n "$TAIL" "$JOBS/$name.log"
  if [ -n "${OUT:-}" ]; then
    local paths=("$JOBS/$name.log") total size left=()
    total=$(du -sb "$JOBS/$name.log" | cut -f1)
    for path in "$@"; do  # in the order given, while their sizes (before compression) fit MAX_BYTES
      [ -e "$path" ] || continue
      size=$(du -sb "$path" | cut -f1)
      if [ $((total + size)) -le "$MAX_BYTES" ]; then paths+=("$path"); total=$((total + size))
      else left+=("$path ($((size / 1048576)) MiB)"); fi
    done
    [ ${#left[@]} -eq 0 ] || printf 'over MAX_BYTES=%s, left for a later call: %s\n' "$MAX_BYTES" "${left[*]}"
    rm -f "$OUT/$name.tgz" "$OUT/$name.tgz.part"*
    tar czf "$OUT/$name.tgz" "${paths[@]}"
    echo "brought back: ${paths[*]} -> \$OUT/$name.tgz ($(du -h "$OUT/$name.tgz" | cut -f1))"
    if [ "$(stat -c %s "$OUT/$name.tgz")" -gt "$PART_BYTES" ]; then
      split -b "$PART_BYTES" -d -a 2 "$OUT/$name.tgz" "$OUT/$name.tgz.part" && rm "$OUT/$name.tgz"
      echo "in $(ls "$OUT/$name.tgz.part"* | wc -l) parts of <= $PART_BYTES bytes: cat $name.tgz.part* > $name.tgz"
    fi
  fi
}

case "${1:-}" in
  start) [ $# -ge 3 ] || usage; shift; start "$@" ;;
  wait) [ $# -ge 3 ] || usage; shift; wait_job "$@" ;;
  status) [ $# -eq 2 ] || usage; state "$2" ;;
  *) usage ;;
esac
