#!/usr/bin/env bash
# Sets up everything the agent, the demo and the tests need on a Debian / Raspberry Pi OS machine:
# system packages through apt (when missing), then a venv with the project installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}

need_apt=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need_apt+=(mosquitto)
command -v mosquitto_sub >/dev/null 2>&1 || need_apt+=(mosquitto-clients)
command -v mbpoll >/dev/null 2>&1 || need_apt+=(mbpoll)
ldconfig -p 2>/dev/null | grep -q libportaudio.so.2 || need_apt+=(libportaudio2)
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
"$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
# The fleet tests and bench: a three-node RabbitMQ cluster (MQTT plugin) and PostgreSQL, each
# started by the tests in temporary directories (tests/support/cluster.py, postgres.py).
[ -x /usr/lib/rabbitmq/bin/rabbitmq-server ] || need_apt+=(rabbitmq-server)
[ -x /usr/lib/postgresql/15/bin/initdb ] || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need_apt+=(postgresql)
# deploy/install.sh (tested in CI) builds with Debian's own python3
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
[ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import setuptools, wheel' >/dev/null 2>&1 || need_apt+=(python3-setuptools python3-wheel)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: need root to install: ${need_apt[*]} (run: sudo apt-get install -y ${need_apt[*]})" >&2
    exit 1
  fi
  echo "bootstrap: installing Debian packages: ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${need_apt[@]}"
fi
# Debian's mosquitto package starts a broker on :1883 through systemd where systemd runs; the demo
# starts its own on a port it checks, so that one is left as it is.

stamp="$VENV/.installed"
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ firmware-sim/setup.cfg -nt "$stamp" ] || [ centre/setup.cfg -nt "$stamp" ]; then
  echo "bootstrap: installing the project and its Python dependencies into $VENV (a minute or two the first time)"
  log="$VENV/install.log"
  # A line per step, so a first `make demo` is not a silent minute.
  step() { echo "bootstrap: $1/4 $2 ..."; }
  if ! { step 1 "pip" && "$VENV/bin/python" -m pip install -q --upgrade pip >"$log" 2>&1 &&
         step 2 "the agent and its test/dev tools" &&
         "$VENV/bin/python" -m pip install -q -e ".[test,dev]" >>"$log" 2>&1 &&
         # The simulator is its own distribution; installed second so its `edge-sim` script is the
         # one left when an older single-distribution install is replaced.
         step 3 "firmware-sim" && "$VENV/bin/python" -m pip install -q -e ./firmware-sim >>"$log" 2>&1 &&
         # The reference centre-side ingest (edge-centre): its own distribution, never on a gateway.
         step 4 "the centre-side ingest" && "$VENV/bin/python" -m pip install -q -e ./centre >>"$log" 2>&1; }; then
    cat "$log" >&2
    echo "bootstrap: pip install failed (log above, also in $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
