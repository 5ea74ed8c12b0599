#!/usr/bin/env bash
# Sets up everything the agent, the demo and the tests need on a Debian / Raspberry Pi OS machine:
# system packages through apt (when missing), then a venv with the project installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
# The interpreter: Debian's own python3 when it is 3.11 or newer, else python3 on PATH. Debian
# builds it with PGO and LTO; a plain source build found first on PATH (pyenv's, say) ran the
# agent's pure-Python paths 1.5-2.8x slower on the same machine (timeit: round() 740 against
# 402 ns, sum(range(10000)) 342 against 130 us) and the test suite 20 % slower. It is also the one
# deploy/install.sh puts on a gateway. PYTHON=... chooses another.
if [ -z "${PYTHON:-}" ]; then
  PYTHON=python3
  if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    PYTHON=/usr/bin/python3
  fi
fi

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
# A venv made from another interpreter (an earlier bootstrap's choice) is made again.
if [ -x "$VENV/bin/python" ]; then
  want=$("$PYTHON" -c 'import sys; print(sys.base_prefix, sys.version_info[:3])')
  have=$("$VENV/bin/python" -c 'import sys; print(sys.base_prefix, sys.version_info[:3])' 2>/dev/null || true)
  if [ "$want" != "$have" ]; then
    echo "bootstrap: $VENV was made with another Python ($have); making it again with $PYTHON ($want)"
    rm -rf "$VENV"
  fi
fi
if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ firmware-sim/setup.cfg -nt "$stamp" ] || [ centre/setup.cfg -nt "$stamp" ] || [ tests/requirements-nodeps.txt -nt "$stamp" ]; then
  echo "bootstrap: installing the project and its Python dependencies into $VENV (a minute or two the first time)"
  log="$VENV/install.log"
  : >"$log"
  # A line per step, so a first `make demo` is not a silent minute.
  step() { echo "bootstrap: $1 $2 ..."; }
  # The agent with its test/dev tools, the simulator (its own distribution: pip installs it after
  # the agent so that its `edge-sim` script is the one left when an older single-distribution
  # install is replaced; after uv the scripts are checked) and the reference centre-side ingest
  # (edge-centre, never on a gateway).
  agent=(-e ".[test,dev]")
  sim=(-e ./firmware-sim)
  centre=(-e ./centre)
  # uv (from PyPI) resolves and installs the same requirements in about 30 s where pip takes over
  # two minutes on a 2-core machine, most of a fresh CI run's setup. pip stays the way in wherever
  # uv cannot be had or fails (a registry only pip is configured for, say).
  # uv ignores the upper bound of a Requires-Python (pip honours it): a release it takes that
  # leaves this Python out is excluded and the install run again (scripts/python_misfits.py).
  # --compile-bytecode, as pip and deploy/install.sh do: uv leaves the dependencies as sources, and
  # where PYTHONDONTWRITEBYTECODE is set (CI, containers) every process compiled them again at each
  # start. asyncua alone (a 2.7 MB ua/object_ids.py) then took 1.0 s and 94 MB to import instead
  # of 0.5 s and 49 MB, so a fresh clone's demo and bench measured the compiler, not the agent
  # (the OPC UA driver's peak 111.9 against 73.8 MB, the demo's 172 against 144 MiB).
  with_uv() {
    local excluded="$VENV/uv-excluded.txt"
    : >"$excluded"
    step 1/2 "uv" && "$VENV/bin/python" -m pip install -q uv >>"$log" 2>&1 &&
      step 2/2 "the agent, its test/dev tools, firmware-sim and the centre-side ingest" || return 1
    for _ in 1 2 3; do
      "$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --constraint "$excluded" \
        --compile-bytecode --upgrade-package pip pip "${agent[@]}" "${sim[@]}" "${centre[@]}" >>"$log" 2>&1 || return 1
      "$VENV/bin/python" scripts/python_misfits.py >"$excluded.new" 2>>"$log" || return 1
      if [ ! -s "$excluded.new" ]; then
        rm -f "$excluded.new"
        [ -x "$VENV/bin/edge-sim" ] && [ -x "$VENV/bin/edge-agent" ] && [ -x "$VENV/bin/edge-centre" ]
        return
      fi
      echo "bootstrap: uv took releases that leave this Python out, installing again without: $(tr '\n' ' ' <"$excluded.new")"
      cat "$excluded.new" >>"$excluded"
    done
    return 1
  }
  with_pip() {
    step 1/4 "pip" && "$VENV/bin/python" -m pip install -q --upgrade pip >>"$log" 2>&1 &&
      step 2/4 "the agent and its test/dev tools" &&
      "$VENV/bin/python" -m pip install -q "${agent[@]}" >>"$log" 2>&1 &&
      step 3/4 "firmware-sim" && "$VENV/bin/python" -m pip install -q "${sim[@]}" >>"$log" 2>&1 &&
      step 4/4 "the centre-side ingest" && "$VENV/bin/python" -m pip install -q "${centre[@]}" >>"$log" 2>&1
  }
  if ! with_uv; then
    echo "bootstrap: uv did not install the project (log in $log); installing with pip" >&2
    if ! with_pip; then
      cat "$log" >&2
      echo "bootstrap: pip install failed (log above, also in $log)" >&2
      exit 1
    fi
  fi
  # Test tools whose declared requirements clash with the agent's, in parts the tests do not use
  # (the file says which and why): without their dependencies.
  step + "test tools installed without their dependencies (tests/requirements-nodeps.txt)"
  if ! "$VENV/bin/python" -m pip install -q --no-deps -r tests/requirements-nodeps.txt >>"$log" 2>&1; then
    cat "$log" >&2
    echo "bootstrap: pip install --no-deps -r tests/requirements-nodeps.txt failed (log above, also in $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi
