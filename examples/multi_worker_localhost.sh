#!/usr/bin/env bash
# Two workers of one MultiWorkerMirroredStrategy run on this machine (127.0.0.1), each a plain
# `tlkeras train` process told its place in the cluster by TF_CONFIG. On a real cluster, run the
# same command on every machine with TF_CONFIG listing all of them and its own task index.
#
#   examples/multi_worker_localhost.sh DATA_DIR OUTPUT_DIR [more `tlkeras train` options]
#
# Worker 0 is the chief: it writes OUTPUT_DIR (checkpoints, model, export); worker 1 writes to a
# temporary folder that is removed at the end. Logs: OUTPUT_DIR.worker0.log / .worker1.log.
# If a worker dies, the other stops with "lost contact with a worker"; run this script again and
# both go on from the last finished epoch.
set -euo pipefail
data=$1; out=$2; shift 2
read -r p0 p1 < <(python -c 'import socket
s = [socket.socket() for _ in range(2)]
[x.bind(("127.0.0.1", 0)) for x in s]
print(*[x.getsockname()[1] for x in s])')
cluster="{\"worker\": [\"127.0.0.1:$p0\", \"127.0.0.1:$p1\"]}"
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
for i in 0 1; do
  TF_CONFIG="{\"cluster\": $cluster, \"task\": {\"type\": \"worker\", \"index\": $i}}" \
    tlkeras train --data "$data" --output-dir "$out" "$@" > "$out.worker$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
trap - EXIT
tail -n 5 "$out.worker0.log"
exit "$status"
