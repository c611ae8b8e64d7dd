#!/usr/bin/env bash
# Measures Postern end to end on one machine, next to the one-hop ceiling
# (the load tool's source straight into its own sink), as bench/README.md
# explains. Usage: bench/run.sh [messages] [size] [connections] [rate]
# (rate: messages/s offered to Postern, to measure latency below saturation)
set -euo pipefail
N=${1:-20000}
SIZE=${2:-2048}
C=${3:-16}
RATE=${4:-0}
# Ports: BENCH_PORT (default 2525) for the relay's sink, the next for the
# one-hop sink, BENCH_PORT+62 for Postern's submission port.
P=${BENCH_PORT:-2525}
SINK2=127.0.0.1:$P SINK1=127.0.0.1:$((P + 1)) SUBMIT=127.0.0.1:$((P + 62))
cd "$(dirname "$0")/.."
work=${KEEP:-$(mktemp -d)}; mkdir -p "$work"
trap 'kill $(jobs -p) 2>/dev/null || true; [ -n "${KEEP:-}" ] || rm -rf "$work"' EXIT
go build -o "$work/postern" ./cmd/postern
go build -o "$work/postern-load" ./cmd/postern-load

echo "== one hop: postern-load source -> postern-load sink ($N x $SIZE bytes, $C connections, STARTTLS + AUTH)"
"$work/postern-load" sink --listen $SINK1 --expect "$N" > "$work/sink1.txt" 2>/dev/null &
sink=$!
sleep 0.5
"$work/postern-load" source --server $SINK1 --user load --password pw --count "$N" --size "$SIZE" --connections "$C"
wait $sink
cat "$work/sink1.txt"

echo
echo "== end to end: source -> Postern (fsync before 250) -> sink (STARTTLS both legs), offered rate ${RATE} (0: all it takes)"
cat > "$work/postern.yaml" <<CONF
hostname: bench.localhost
data_dir: $work/data
log: {level: warn}
submission:
  listen: ["$SUBMIT"]
  tls_listen: []
  max_connections_per_ip: 1000
delivery:
  routes:
    - {domain: "*", next_hop: "$SINK2", tls: encrypt}
CONF
echo pw | "$work/postern" user add load --password-stdin -c "$work/postern.yaml" > /dev/null
"$work/postern-load" sink --listen $SINK2 --expect "$N" > "$work/sink2.txt" 2>/dev/null &
sink=$!
"$work/postern" serve -c "$work/postern.yaml" --cpuprofile "$work/cpu.prof" 2> "$work/postern.log" &
pid=$!
for _ in $(seq 100); do grep -q . <(ss -ltn 2>/dev/null | grep $SUBMIT) 2>/dev/null && break; sleep 0.1; done
sleep 0.5
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
cpu0=$(ticks)
"$work/postern-load" source --server $SUBMIT --user load --password pw --count "$N" --size "$SIZE" --connections "$C" --rate "$RATE"
wait $sink
cpu1=$(ticks)
cat "$work/sink2.txt"
hz=$(getconf CLK_TCK)
awk -v d=$((cpu1 - cpu0)) -v hz="$hz" -v n="$N" 'BEGIN { printf "Postern CPU: %.2f s for %d messages, %.3f CPU-seconds per 1,000 messages\n", d / hz, n, d / hz / n * 1000 }'
echo "Postern RSS after the run: $(awk '/VmRSS/ {print $2, $3}' "/proc/$pid/status"), peak (VmHWM) $(awk '/VmHWM/ {print $2, $3}' "/proc/$pid/status")"
kill -TERM $pid
wait $pid || true
echo
echo "== where Postern's CPU went (pprof top 10)"
go tool pprof -top -nodecount=10 "$work/postern" "$work/cpu.prof" 2>/dev/null | tail -n 11
