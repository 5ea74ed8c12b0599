#!/bin/sh
# Installs water-edge-agent on a Debian / Raspberry Pi OS gateway (run as root):
#   a release venv under /opt/edge-agent/releases/ with /opt/edge-agent/current linking to it (the
#   A/B layout signed self-updates switch; docs/updates.md), /usr/local/bin/edge-agent linking to
#   current's command, config under /etc/edge-agent, state under
#   /var/lib/edge-agent (systemd's StateDirectory), the systemd units installed and enabled.
#   /etc/edge-agent is root:edge-agent 0750 (keys and secrets the agent reads, never writes);
#   config.toml there is a link to managed/config.toml, in the one directory the agent may write
#   (2770 root:edge-agent, the unit's ReadWritePaths) so that signed config_update commands work.
#   That is why nobody is to be put in the edge-agent group: it may rewrite the config and read the
#   secrets. Reading the status (`edge-agent status`, `tail`) is the edge-agent-status group's
#   (made here, the service user in it so that the agent can give its socket that group), which
#   grants nothing else: sudo usermod -aG edge-agent-status <user>.
#
#   deploy/install.sh [--root DIR] [--source DIR] [--python PY] [--no-enable] [--no-start]
#                     [--venv-args "ARGS"] [--pip-args "ARGS"]
#
# --root DIR (or DESTDIR=DIR) installs into a throw-away root (an SD-card image): nothing outside
# DIR is touched, the service user is declared in DIR/usr/lib/sysusers.d instead of created, the
# ownership of /etc/edge-agent in DIR/usr/lib/tmpfiles.d (applied at first boot, once the user
# exists), and the unit is enabled with `systemctl --root` (offline symlinks) and never started.
# Re-running installs a new release beside the old one (which becomes `previous`) and never
# overwrites an existing config.toml (an older install's plain config.toml is moved into managed/).
#
# A fresh install writes config.toml from deploy/config.example.toml and records that file's sha256
# in /etc/edge-agent/config.example.sha256 (root's). While config.toml is still byte for byte the
# example, the agent is enabled but not started (and refuses to start at boot: `check-config` and
# `run` refuse the unedited example), because the example names device addresses that may exist on
# a plant network; the script ends with the next steps. With an edited config it (re)starts the
# agent once `check-config` passes, as on every upgrade.
set -eu
# Whatever root's umask (027 or 077 on hardened hosts, CIS): the release, the units and the
# directories made here are read by the service user and by systemd. Secrets get explicit modes.
umask 022

ROOT="${DESTDIR:-}"
SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="python3"
ENABLE=1
START=1
VENV_ARGS=""
PIP_ARGS=""
USER_NAME="edge-agent"
# Who may read the agent's status over its socket, and nothing else (docs/security.md).
STATUS_GROUP="edge-agent-status"

usage() { sed -n '2,30p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --source) SOURCE="$2"; shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --venv-args) VENV_ARGS="$2"; shift 2 ;;
        --pip-args) PIP_ARGS="$2"; shift 2 ;;
        --no-enable) ENABLE=0; shift ;;
        --no-start) START=0; shift ;;
        -h|--help) usage 0 ;;
        *) echo "install.sh: unknown option $1" >&2; usage 2 ;;
    esac
done
ROOT="${ROOT%/}"
OFFLINE=0
[ -n "$ROOT" ] && OFFLINE=1

say() { echo "install.sh: $*"; }

if [ "$OFFLINE" = 0 ] && [ "$(id -u)" != 0 ]; then
    echo "install.sh: run as root (or use --root DIR for a staged install)" >&2
    exit 1
fi
[ -f "$SOURCE/setup.cfg" ] || { echo "install.sh: $SOURCE is not a water-edge-agent source tree" >&2; exit 1; }

OPT="$ROOT/opt/edge-agent"
ETC="$ROOT/etc/edge-agent"
UNIT_DIR="$ROOT/etc/systemd/system"

if [ "$OFFLINE" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "system packages (python3-venv, sqlite3)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3-venv python3-pip sqlite3 libportaudio2 >/dev/null
fi

say "service user $USER_NAME, status group $STATUS_GROUP"
mkdir -p "$ROOT/usr/lib/sysusers.d"
cat >"$ROOT/usr/lib/sysusers.d/edge-agent.conf" <<SYSUSERS
# water-edge-agent's service user; serial (dialout) and sound (audio) access.
u $USER_NAME - "water-edge-agent" /var/lib/edge-agent
m $USER_NAME dialout
m $USER_NAME audio
# Who may read the agent's status socket (and nothing else); the service user is in it to give
# the socket that group. Technicians join this group, never $USER_NAME's.
g $STATUS_GROUP -
m $USER_NAME $STATUS_GROUP
SYSUSERS
if [ "$OFFLINE" = 0 ]; then
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers edge-agent.conf
    else
        if ! getent group "$STATUS_GROUP" >/dev/null 2>&1; then
            groupadd --system "$STATUS_GROUP"
        fi
        if ! id "$USER_NAME" >/dev/null 2>&1; then
            useradd --system --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin \
                --groups "dialout,audio,$STATUS_GROUP" "$USER_NAME"
        else
            usermod -aG "$STATUS_GROUP" "$USER_NAME"
        fi
    fi
fi

VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SOURCE/agent/__init__.py")"
RELEASE="$VERSION-install-$(date -u +%Y%m%dT%H%M%SZ)"
say "release $RELEASE in $OPT/releases"
mkdir -p "$OPT/releases" "$OPT/wheels"
# A venv cannot be moved (its scripts name their interpreter by absolute path): build it where it
# stays. With --root, that is inside the staged root; its scripts then name the staged path, so a
# staged image is meant to be installed from again on the device or built at the same path.
# shellcheck disable=SC2086 # the args are meant to split
"$PYTHON" -m venv $VENV_ARGS "$OPT/releases/$RELEASE"
# Build from a copy: pip builds in the tree it is given, and the source may be read-only or shared.
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
tar -C "$SOURCE" --exclude=.git --exclude=.venv --exclude=build --exclude='*.egg-info' \
    --exclude=__pycache__ -cf - . | tar -C "$STAGE" -xf -
# shellcheck disable=SC2086
"$OPT/releases/$RELEASE/bin/python" -m pip install --quiet --disable-pip-version-check $PIP_ARGS "$STAGE"
printf '{"version": "%s", "installed_by": "install.sh"}\n' "$VERSION" >"$OPT/releases/$RELEASE/release.json"
# Switch: the old current becomes previous (a rollback target), each link replaced in one rename.
if [ -L "$OPT/current" ]; then
    ln -sfn "$(readlink "$OPT/current")" "$OPT/.previous.tmp" && mv -Tf "$OPT/.previous.tmp" "$OPT/previous"
fi
ln -sfn "releases/$RELEASE" "$OPT/.current.tmp" && mv -Tf "$OPT/.current.tmp" "$OPT/current"
# The path the docs of older installs name; an older install's real venv there is replaced.
if [ -d "$OPT/venv" ] && [ ! -L "$OPT/venv" ]; then
    rm -rf "$OPT/venv"
fi
ln -sfn current "$OPT/venv"
# The command the docs and the technician type (`edge-agent status`), following updates.
mkdir -p "$ROOT/usr/local/bin"
ln -sfn /opt/edge-agent/current/bin/edge-agent "$ROOT/usr/local/bin/edge-agent"
mkdir -p "$OPT/docs"
cp "$SOURCE/docs/operations.md" "$SOURCE/docs/durability.md" "$SOURCE/docs/updates.md" "$OPT/docs/" 2>/dev/null || true

say "config in $ETC"
MANAGED="$ETC/managed"
mkdir -p "$MANAGED"
chmod 0750 "$ETC"
chmod 2770 "$MANAGED"
if [ -f "$ETC/config.toml" ] && [ ! -L "$ETC/config.toml" ]; then
    mv "$ETC/config.toml" "$MANAGED/config.toml"
    say "moved $ETC/config.toml into $MANAGED/ (config_update writes there)"
fi
# The example's sha256, recorded where only root writes: while the config is still exactly that
# file, nothing starts the agent on it (agent/config/example.py). By content, so that no marker
# string in the config has to be deleted by hand; any edit ends it.
EXAMPLE_RECORD="$ETC/config.example.sha256"
sha256_of() { sha256sum <"$1" | cut -d' ' -f1; }
record_example() {
    if [ ! -f "$EXAMPLE_RECORD" ]; then
        cat >"$EXAMPLE_RECORD" <<RECORD
# The sha256 of the example config deploy/install.sh wrote to /etc/edge-agent/config.toml. While that
# file is still exactly this example, the agent is not started and refuses to start (check-config and
# run say so): the example's devices and brokers are placeholders. Edit the config; leave this file.
RECORD
    fi
    grep -q "^$1 " "$EXAMPLE_RECORD" || echo "$1  config.example.toml (release $VERSION)" >>"$EXAMPLE_RECORD"
    chmod 0644 "$EXAMPLE_RECORD"
}
if [ ! -f "$MANAGED/config.toml" ]; then
    cp "$SOURCE/deploy/config.example.toml" "$MANAGED/config.toml"
    record_example "$(sha256_of "$MANAGED/config.toml")"
    say "wrote $ETC/config.toml from the example: edit [gateway], [uplink] and [[devices]]"
else
    if cmp -s "$MANAGED/config.toml" "$SOURCE/deploy/config.example.toml"; then
        record_example "$(sha256_of "$MANAGED/config.toml")"  # an older install's, never edited
    fi
    say "kept the existing $ETC/config.toml"
fi
chmod 0640 "$MANAGED/config.toml"
UNEDITED=0
if [ -f "$EXAMPLE_RECORD" ] && grep -q "^$(sha256_of "$MANAGED/config.toml") " "$EXAMPLE_RECORD"; then
    UNEDITED=1
fi
if [ ! -f "$ETC/release-keys" ]; then
    cat >"$ETC/release-keys" <<KEYS
# Release keys trusted for signed self-updates (docs/updates.md): NAME BASE64-PUBLIC-KEY per line,
# as printed by \`edge-agent release keygen\`. Root-owned: the agent reads it, never writes it.
KEYS
fi
chmod 0640 "$ETC/release-keys"
# The minimum release version (docs/updates.md, "The minimum release version"): the updater installs
# no release below it, however validly signed, so an old signed bundle with a known hole cannot put
# the gateway back on it. It is $OPT/min-version.json, {"min_version": "1.3.0"}, root's (the agent
# cannot write it) and in the install root rather than here because the updater raises it itself
# (its unit may write /opt/edge-agent, not /etc/edge-agent): once a release whose signed manifest
# carries min_version (`edge-agent release bundle --min-version`) has passed its health check. No
# file, no minimum: this script writes none and does not check it (it is root, on site). Raise it
# on site with `edge-agent update min-version 1.3.0` (never above the current release; lower only
# with --lower); `edge-agent update status` shows it.
ln -sfn managed/config.toml "$ETC/config.toml"
mkdir -p "$ROOT/usr/lib/tmpfiles.d"
cat >"$ROOT/usr/lib/tmpfiles.d/edge-agent.conf" <<TMPFILES
# water-edge-agent: /etc/edge-agent readable by the service, only managed/ writable by it.
d /etc/edge-agent 0750 root $USER_NAME -
d /etc/edge-agent/managed 2770 root $USER_NAME -
z /etc/edge-agent/managed/config.toml 0640 - $USER_NAME -
TMPFILES
if [ "$OFFLINE" = 0 ]; then
    chgrp "$USER_NAME" "$ETC" "$MANAGED" "$MANAGED/config.toml" "$ETC/release-keys"
fi

say "systemd unit"
mkdir -p "$UNIT_DIR"
for unit in edge-agent.service edge-agent-update.service edge-agent-update.path; do
    install -m 0644 "$SOURCE/deploy/$unit" "$UNIT_DIR/$unit"
done
if [ "$ENABLE" = 1 ]; then
    if [ "$OFFLINE" = 1 ]; then
        systemctl --root="$ROOT" enable edge-agent.service edge-agent-update.service edge-agent-update.path
    else
        systemctl daemon-reload
        systemctl enable edge-agent.service edge-agent-update.service
        systemctl enable --now edge-agent-update.path
        if [ "$UNEDITED" = 1 ]; then
            if systemctl is-active --quiet edge-agent.service; then
                systemctl stop edge-agent.service
                say "stopped edge-agent.service: it ran on the unedited example config"
            fi
        elif [ "$START" = 1 ]; then
            if "$OPT/current/bin/edge-agent" check-config -c "$ETC/config.toml" >/dev/null 2>&1; then
                systemctl restart edge-agent.service
            else
                say "not started: the config does not validate yet; run"
                say "  $OPT/current/bin/edge-agent check-config -c /etc/edge-agent/config.toml"
            fi
        fi
    fi
fi
if [ "$OFFLINE" = 1 ]; then
    # A staged root becomes an image, copied to many boards: nothing one board made belongs in it
    # (docs/operations.md, "A card copied or moved to another board").
    if [ -n "$(ls -A "$ROOT/var/lib/edge-agent" 2>/dev/null)" ]; then
        echo "install.sh: warning: $ROOT/var/lib/edge-agent holds an agent's state (outbox, identity):" \
            "every board made from this image starts as that gateway; remove it before taking the image" >&2
    fi
    if [ -s "$ROOT/etc/machine-id" ] && [ "$(cat "$ROOT/etc/machine-id")" != uninitialized ]; then
        echo "install.sh: warning: $ROOT/etc/machine-id is set: every board made from this image shares" \
            "it, and a board without a Raspberry Pi CPU serial is told apart by it; empty it before" \
            "taking the image (truncate -s 0 $ROOT/etc/machine-id: each board writes its own at first boot)" >&2
    fi
fi
if [ "$UNEDITED" = 1 ]; then
    say "not started: /etc/edge-agent/config.toml is still the example, unedited: its site, brokers"
    say "and device addresses are placeholders, and the agent refuses to run on it. Next:"
    say "  1. edit /etc/edge-agent/config.toml: [gateway] site and id, [uplink], [[devices]]"
    say "     (edge-agent scan ... finds what the devices have; docs/operations.md, Install)"
    say "  2. edge-agent check-config        # 0 = valid, 2 lists every problem"
    if [ "$ENABLE" = 1 ]; then
        say "  3. systemctl start edge-agent     # enabled: it starts at every boot from then on"
    else
        say "  3. systemctl enable --now edge-agent"
    fi
    say "done. Then check with: systemctl status edge-agent; edge-agent status"
else
    say "done. Check with: systemctl status edge-agent; edge-agent status"
fi
