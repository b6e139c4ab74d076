#!/bin/sh
# Agent CPU cost per request: nginx origin (1 KiB at /1k) <- piko agent http <- pikod <- wrk.
# Prints req/s, the agent's CPU microseconds per request (utime+stime from /proc) and,
# with STRACE=1, the agent's system calls per request over a second wrk run.
# Usage: bench/agent_profile.sh [BUILD_DIR] [SECONDS]   (default build/release, 5)
# AGENT_ARGS adds options to the agent (e.g. AGENT_ARGS=--access-log=false).
set -eu
B=${1:-build/release}
SECS=${2:-5}
D=$(mktemp -d /tmp/agent-profile.XXXXXX)
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
OP=$(port); PP=$(port); UP=$(port); AP=$(port); CP=$(port)
KIB=$(head -c 1024 /dev/zero | tr '\0' x)
mkdir -p "$D/state"
cat >"$D/nginx.conf" <<NG
worker_processes 1; daemon off; pid $D/nginx.pid; error_log $D/nginx.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 100000000; keepalive_timeout 300s;
  client_body_temp_path $D/t1; proxy_temp_path $D/t2; fastcgi_temp_path $D/t3;
  uwsgi_temp_path $D/t4; scgi_temp_path $D/t5;
  server { listen 127.0.0.1:$OP; location = /1k { default_type text/plain; return 200 "$KIB"; } } }
NG
PIDS=""
cleanup() { for p in $PIDS; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$D"; }
trap cleanup EXIT INT TERM
taskset -c 1 nginx -p "$D" -c "$D/nginx.conf" >"$D/nginx.out" 2>&1 & PIDS="$PIDS $!"
taskset -c 1 "$B/pikod" --workers 1 --state-dir "$D/state" --proxy.bind-addr 127.0.0.1:$PP \
	--upstream.bind-addr 127.0.0.1:$UP --admin.bind-addr 127.0.0.1:$AP \
	--cluster.bind-addr 127.0.0.1:$CP --proxy.access-log.disable >"$D/pikod.log" 2>&1 & PIDS="$PIDS $!"
sleep 1
taskset -c 1 "$B/piko" agent http bench 127.0.0.1:$OP --connect.url http://127.0.0.1:$UP \
	${AGENT_ARGS:-} >"$D/agent.log" 2>&1 & AG=$!; PIDS="$PIDS $AG"
i=0
until curl -sf -o /dev/null -H 'x-piko-endpoint: bench' http://127.0.0.1:$PP/1k; do
	i=$((i + 1)); [ $i -lt 100 ] || { echo "tunnel not up"; cat "$D/agent.log"; exit 1; }; sleep 0.1
done
cpu() { awk '{print $14 + $15}' /proc/$AG/stat; }
HZ=$(getconf CLK_TCK)
c0=$(cpu)
OUT=$(taskset -c 0 wrk -t1 -c64 -d${SECS}s -H 'x-piko-endpoint: bench' http://127.0.0.1:$PP/1k)
c1=$(cpu)
REQS=$(echo "$OUT" | awk '/requests in/ {print $1}')
RPS=$(echo "$OUT" | awk '/Requests\/sec/ {print $2}')
echo "$OUT" | grep -E 'Non-2xx|Socket errors' || true
awk -v r="$REQS" -v c="$((c1 - c0))" -v hz="$HZ" -v rps="$RPS" \
	'BEGIN { printf "req/s %s  agent CPU %.1f us/req (%d requests)\n", rps, c * 1e6 / hz / r, r }'
if [ "${STRACE:-0}" = 1 ]; then
	strace -c -f -o "$D/strace.txt" -p $AG & ST=$!
	sleep 1
	OUT=$(taskset -c 0 wrk -t1 -c64 -d3s -H 'x-piko-endpoint: bench' http://127.0.0.1:$PP/1k)
	kill -INT $ST; wait $ST || true
	REQS=$(echo "$OUT" | awk '/requests in/ {print $1}')
	echo "strace: $REQS requests"
	awk -v r="$REQS" 'NR > 2 && $NF != "total" && $4 ~ /^[0-9]+$/ { t += $4; printf "  %-16s %6.2f /req\n", $NF, $4 / r }
		END { printf "  %-16s %6.2f /req\n", "total", t / r }' "$D/strace.txt"
fi
