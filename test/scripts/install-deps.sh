#!/usr/bin/env bash
# Installs what building and testing the messaging extension needs on
# Debian 12, as root: PostgreSQL 15 with its server headers, the rabbitmq-c
# client library, RabbitMQ (only its binaries: tests and the demo run
# scratch nodes, never the system broker), Perl's IPC::Run for the TAP
# tests, a C toolchain, Node.js, and the interop clients' npm packages.
# Idempotent: a run with everything present changes nothing and does not
# touch the network.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PACKAGES=(postgresql-15 postgresql-server-dev-15 librabbitmq-dev
          rabbitmq-server libipc-run-perl make gcc rsync openssl)

missing=()
for p in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$p")
    fi
done
if ! command -v node >/dev/null 2>&1; then
    missing+=(nodejs npm)
elif ! command -v npm >/dev/null 2>&1; then
    missing+=(npm)
fi

if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install-deps.sh: missing packages (${missing[*]}); run as root" >&2
        exit 1
    fi
    echo "install-deps.sh: installing ${missing[*]}"
    # Keep package scripts from starting system services (the RabbitMQ and
    # PostgreSQL packages would otherwise start a system broker/cluster).
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy"
        chmod 755 "$policy"
        created_policy=1
    fi
    cleanup_policy() { if [ "$created_policy" = 1 ]; then rm -f "$policy"; fi; }
    trap cleanup_policy EXIT
    export DEBIAN_FRONTEND=noninteractive
    apt-get update
    apt-get install -y --no-install-recommends "${missing[@]}"
    cleanup_policy
    trap - EXIT
    # A system broker may still have come up (e.g. under systemd, which
    # ignores policy-rc.d in some setups); the tests never use it.  Only a
    # broker this script just installed is stopped, never one already there.
    if [[ " ${missing[*]} " == *" rabbitmq-server "* ]] &&
       command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
    fi
else
    echo "install-deps.sh: Debian packages present"
fi

interop="$ROOT/test/interop"
if [ ! -d "$interop/node_modules/amqplib" ]; then
    echo "install-deps.sh: npm ci in test/interop"
    (cd "$interop" && npm ci --no-audit --no-fund)
else
    echo "install-deps.sh: test/interop/node_modules present"
fi
