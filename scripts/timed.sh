#!/usr/bin/env bash
# Runs a command and appends one JSON line about it to FILE: its wall and CPU seconds, the load
# average just before and after, the date, commit and CPU — the conditions the README's figures
# were measured under (`imdb-lora results` reads them). With --stamp PATH, the line is written
# only when the command rewrote that stamp, i.e. the stage ran rather than found itself up to date.
#
#   scripts/timed.sh FILE NAME [--stamp PATH] -- COMMAND [ARGS...]
set -euo pipefail
file=$1 name=$2
shift 2
stamp=
if [[ ${1:-} == --stamp ]]; then
    stamp=$2
    shift 2
fi
[[ ${1:-} == -- ]] && shift

load() { cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo null; }
mtime() { stat -c %y "$1" 2>/dev/null || echo none; }

stamp_before=$([[ -n $stamp ]] && mtime "$stamp" || echo)
load_before=$(load)
start=$(date +%s.%N)
"$@"
end=$(date +%s.%N)
load_after=$(load)
# `times` (in this shell, not a subshell) prints the shell's and then its children's user and
# system time, as 1m2.345s.
times_file=$(mktemp)
times >"$times_file"
read -r user sys < <(tail -n 1 "$times_file" | awk '{ for (i = 1; i <= 2; i++) { split($i, t, /[ms]/); s[i] = t[1] * 60 + t[2] } printf "%.3f %.3f\n", s[1], s[2] }')
rm -f "$times_file"
if [[ -n $stamp && $(mtime "$stamp") == "$stamp_before" ]]; then
    exit 0 # up to date: nothing was measured
fi
mkdir -p "$(dirname "$file")"
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo 2>/dev/null | head -n 1)
commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if ! git diff --quiet HEAD 2>/dev/null; then commit="$commit+changes"; fi
printf '{"stage":"%s","wall_s":%.3f,"user_s":%s,"sys_s":%s,"load_before":%s,"load_after":%s,"date":"%s","commit":"%s","cpu":"%s","cpus":%s}\n' \
    "$name" "$(awk -v a="$start" -v b="$end" 'BEGIN { print b - a }')" "$user" "$sys" "$load_before" "$load_after" \
    "$(date -u +%Y-%m-%dT%H:%MZ)" "$commit" "${cpu:-unknown}" "$(nproc)" >>"$file"
