#!/usr/bin/env bash
# The demo: the simulated pump station, a local Mosquitto, the agent, and live readings at the broker.
# DEMO_SECONDS=N stops everything it started after N seconds and exits 0 (0 = run until Ctrl-C).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
BIN="$VENV/bin"
DEMO_SECONDS=${DEMO_SECONDS:-0}
RUN=$(mktemp -d /tmp/edge-demo.XXXXXX)
PIDS=()

cleanup() {
  trap - EXIT INT TERM
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  echo "demo: stopped; files kept in $RUN"
}
trap cleanup EXIT
trap 'exit 0' INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)

BROKER_PORT=1883
if port_busy "$BROKER_PORT"; then
  echo "demo: a broker already listens on localhost:1883; using it"
else
  printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$BROKER_PORT" > "$RUN/mosquitto.conf"
  "$MOSQUITTO" -c "$RUN/mosquitto.conf" > "$RUN/mosquitto.log" 2>&1 &
  PIDS+=($!)
fi

SIM_PORT=5020
port_busy "$SIM_PORT" && SIM_PORT=0
"$BIN/edge-sim" run --port "$SIM_PORT" --endpoints-file "$RUN/endpoints.json" > "$RUN/sim.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do [ -s "$RUN/endpoints.json" ] && break; sleep 0.1; done
[ -s "$RUN/endpoints.json" ] || { echo "demo: firmware-sim did not start; see $RUN/sim.log"; exit 1; }
SIM_PORT=$("$BIN/python" -c 'import json,sys; print(json.load(open(sys.argv[1]))["modbus_tcp"]["port"])' "$RUN/endpoints.json")
for _ in $(seq 50); do port_busy "$BROKER_PORT" && break; sleep 0.1; done

sed -e "s|^state_dir = .*|state_dir = \"$RUN/state\"|" \
    -e "s|^port = 5020|port = $SIM_PORT|" deploy/demo.toml > "$RUN/agent.toml"
"$BIN/edge-agent" check-config -c "$RUN/agent.toml"
"$BIN/edge-agent" run -c "$RUN/agent.toml" > "$RUN/agent.log" 2>&1 &
PIDS+=($!)

echo "demo: firmware-sim on 127.0.0.1:$SIM_PORT, broker on localhost:$BROKER_PORT, agent logs in $RUN/agent.log"
echo "demo: readings arriving at the broker (topic water/demo-plant/gw-01/#):"
"$BIN/python" scripts/watch_broker.py --port "$BROKER_PORT" --topic 'water/demo-plant/gw-01/#' &
PIDS+=($!)

if [ "$DEMO_SECONDS" -gt 0 ]; then
  sleep "$DEMO_SECONDS"
  "$BIN/edge-agent" status -c "$RUN/agent.toml" || true
else
  wait "${PIDS[-1]}"
fi
