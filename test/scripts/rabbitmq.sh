#!/usr/bin/env bash
# Manages a scratch RabbitMQ node for tests and the demo (never the system
# broker). Everything the node owns lives under MQ_DIR, and every socket it
# opens is bound to 127.0.0.1.
#
# Usage: rabbitmq.sh start|stop|kill|status|wait|ctl ARGS...
#   start   start the node in the background (returns once it accepts AMQP)
#   stop    graceful shutdown, then stop this node's epmd
#   kill    kill -9 the Erlang VM (simulates a crash; state stays on disk)
#   status  print "running" or "stopped"; exit 0 when running, 3 otherwise
#   wait    block until the node accepts AMQP connections (MQ_WAIT_SECONDS)
#   ctl     run rabbitmqctl against this node, e.g. `ctl list_queues`
#
# Environment:
#   MQ_DIR           state directory (required); created if missing. Holds
#                    rabbitmq.conf, enabled_plugins (empty), home/ (Erlang
#                    cookie), mnesia/ (durable queues, persistent messages),
#                    log/ and the pid file. Starting again with the same
#                    MQ_DIR recovers the previous state.
#                    A file extra.conf in MQ_DIR, when present, is appended
#                    to rabbitmq.conf (tests add a TLS listener this way).
#   MQ_PORT          AMQP port on 127.0.0.1 (default: the port of the last
#                    start in MQ_DIR, else 5789; at most 43525)
#   MQ_DIST_PORT     Erlang distribution port (default MQ_PORT+20000)
#   MQ_EPMD_PORT     port of this node's own epmd (default MQ_PORT+21000)
#   MQ_CTL_PORT      first of 10 ports used by rabbitmqctl (default
#                    MQ_PORT+22000)
#   MQ_WAIT_SECONDS  bound for start/wait/stop (default 60)
#
# The node name is derived from MQ_DIR, so several scratch nodes can run
# side by side as long as their ports differ. The script runs as any user
# (root in CI and the demo, postgres inside TAP tests).
set -euo pipefail

RMQ_SBIN=/usr/lib/rabbitmq/bin

die() { echo "rabbitmq.sh: $*" >&2; exit 1; }

[ -n "${MQ_DIR:-}" ] || die "MQ_DIR is required"
# A node started before remembers its port (lets cleanup code stop it
# knowing only MQ_DIR).
if [ -z "${MQ_PORT:-}" ] && [ -s "$MQ_DIR/port" ]; then
    MQ_PORT="$(cat "$MQ_DIR/port")"
fi
MQ_PORT="${MQ_PORT:-5789}"
case "$MQ_PORT" in ''|*[!0-9]*) die "MQ_PORT must be a number" ;; esac
MQ_DIST_PORT="${MQ_DIST_PORT:-$((MQ_PORT + 20000))}"
MQ_EPMD_PORT="${MQ_EPMD_PORT:-$((MQ_PORT + 21000))}"
MQ_CTL_PORT="${MQ_CTL_PORT:-$((MQ_PORT + 22000))}"
MQ_WAIT_SECONDS="${MQ_WAIT_SECONDS:-60}"
for p in "$MQ_PORT" "$MQ_DIST_PORT" "$MQ_EPMD_PORT" "$((MQ_CTL_PORT + 9))"; do
    [ "$p" -ge 1024 ] && [ "$p" -le 65535 ] || die "port $p out of range"
done

mkdir -p "$MQ_DIR"
MQ_DIR="$(cd "$MQ_DIR" && pwd)"
NODE_TAG="$(printf '%s' "$MQ_DIR" | cksum | cut -d' ' -f1)"
NODE_NAME="scratch${NODE_TAG}@localhost"
PID_FILE="$MQ_DIR/rabbit.pid"
CONSOLE_LOG="$MQ_DIR/log/console.log"

# Environment shared by the server and the CLI. No system configuration
# file is read: the env file, config and plugin list are all ours.
setup_env() {
    mkdir -p "$MQ_DIR/home" "$MQ_DIR/mnesia" "$MQ_DIR/log"
    chmod 700 "$MQ_DIR/home"
    : > "$MQ_DIR/rabbitmq-env.conf"
    echo '[].' > "$MQ_DIR/enabled_plugins"
    cat > "$MQ_DIR/rabbitmq.conf" <<CONF
# scratch node: AMQP on loopback only, no plugins
listeners.tcp.default = 127.0.0.1:${MQ_PORT}
log.console = false
log.file = rabbit.log
log.file.level = info
CONF
    # Settings a test adds (for example a TLS listener) go in extra.conf.
    if [ -s "$MQ_DIR/extra.conf" ]; then
        cat "$MQ_DIR/extra.conf" >> "$MQ_DIR/rabbitmq.conf"
    fi
    export HOME="$MQ_DIR/home"
    export RABBITMQ_CONF_ENV_FILE="$MQ_DIR/rabbitmq-env.conf"
    export RABBITMQ_CONFIG_FILE="$MQ_DIR/rabbitmq.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$MQ_DIR/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$MQ_DIR/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$MQ_DIR/mnesia"
    export RABBITMQ_MNESIA_DIR="$MQ_DIR/mnesia/${NODE_NAME}"
    export RABBITMQ_LOG_BASE="$MQ_DIR/log"
    export RABBITMQ_PID_FILE="$PID_FILE"
    export RABBITMQ_NODENAME="$NODE_NAME"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT="$MQ_PORT"
    export RABBITMQ_DIST_PORT="$MQ_DIST_PORT"
    export ERL_EPMD_ADDRESS=127.0.0.1
    export ERL_EPMD_PORT="$MQ_EPMD_PORT"
    export ERL_CRASH_DUMP="$MQ_DIR/log/erl_crash.dump"
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1} -kernel inet_dist_listen_min ${MQ_DIST_PORT} -kernel inet_dist_listen_max ${MQ_DIST_PORT}"
    export RABBITMQ_CTL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
    export RABBITMQ_CTL_DIST_PORT_MIN="$MQ_CTL_PORT"
    export RABBITMQ_CTL_DIST_PORT_MAX="$((MQ_CTL_PORT + 9))"
    [ -f "$RABBITMQ_ADVANCED_CONFIG_FILE" ] || echo '[].' > "$RABBITMQ_ADVANCED_CONFIG_FILE"
}

beam_pid() {
    local pid
    [ -s "$PID_FILE" ] || return 1
    pid="$(tr -dc '0-9' < "$PID_FILE")"
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    echo "$pid"
}

# True once the node answers the AMQP 0-9-1 protocol header with a frame
# (a method frame starts with byte 1: connection.start).
amqp_ready() {
    local reply
    reply="$(timeout 3 bash -c '
        exec 3<>"/dev/tcp/127.0.0.1/$1" || exit 1
        printf "AMQP\000\000\011\001" >&3
        head -c 1 <&3 | od -An -tu1 | tr -d " "
    ' _ "$MQ_PORT" 2>/dev/null)" || return 1
    [ "$reply" = "1" ]
}

port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
}

do_wait() {
    local deadline=$((SECONDS + MQ_WAIT_SECONDS))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if amqp_ready; then
            return 0
        fi
        if [ -f "$MQ_DIR/starting" ] && ! kill -0 "$(cat "$MQ_DIR/starting")" 2>/dev/null \
           && ! beam_pid >/dev/null; then
            echo "rabbitmq.sh: node exited during start; last console lines:" >&2
            tail -n 30 "$CONSOLE_LOG" >&2 || true
            return 1
        fi
        sleep 0.2
    done
    echo "rabbitmq.sh: node not accepting AMQP on 127.0.0.1:${MQ_PORT} after ${MQ_WAIT_SECONDS}s" >&2
    tail -n 30 "$CONSOLE_LOG" >&2 || true
    return 1
}

do_start() {
    if beam_pid >/dev/null; then
        die "node already running (pid $(beam_pid)) for $MQ_DIR"
    fi
    if port_open "$MQ_PORT"; then
        die "127.0.0.1:${MQ_PORT} is already in use"
    fi
    rm -f "$PID_FILE"
    echo "$MQ_PORT" > "$MQ_DIR/port"
    local t0 t1
    t0="$(date +%s.%N)"
    # setsid: the node must not die with the caller's terminal or process
    # group; its output goes to the console log.
    setsid "$RMQ_SBIN/rabbitmq-server" >> "$CONSOLE_LOG" 2>&1 < /dev/null &
    echo "$!" > "$MQ_DIR/starting"
    do_wait
    rm -f "$MQ_DIR/starting"
    t1="$(date +%s.%N)"
    echo "rabbitmq.sh: node ${NODE_NAME} accepting AMQP on 127.0.0.1:${MQ_PORT} (pid $(beam_pid || echo '?'), started in $(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b-a}')s)"
}

wait_gone() {
    local pid="$1" deadline=$((SECONDS + MQ_WAIT_SECONDS))
    while kill -0 "$pid" 2>/dev/null; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.2
    done
}

stop_epmd() {
    # Only this node's epmd listens on MQ_EPMD_PORT.
    if port_open "$MQ_EPMD_PORT"; then
        epmd -port "$MQ_EPMD_PORT" -kill >/dev/null 2>&1 || true
    fi
}

do_stop() {
    local pid
    if pid="$(beam_pid)"; then
        if ! timeout "$MQ_WAIT_SECONDS" "$RMQ_SBIN/rabbitmqctl" -n "$NODE_NAME" stop >/dev/null 2>&1; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
        if ! wait_gone "$pid"; then
            echo "rabbitmq.sh: node did not stop in ${MQ_WAIT_SECONDS}s, killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
            wait_gone "$pid" || true
        fi
        echo "rabbitmq.sh: node ${NODE_NAME} stopped"
    else
        echo "rabbitmq.sh: node ${NODE_NAME} not running"
    fi
    rm -f "$PID_FILE" "$MQ_DIR/starting"
    stop_epmd
}

do_kill() {
    local pid
    if pid="$(beam_pid)"; then
        kill -KILL "$pid"
        wait_gone "$pid" || die "pid $pid survived kill -9"
        echo "rabbitmq.sh: node ${NODE_NAME} killed (pid $pid)"
    else
        echo "rabbitmq.sh: node ${NODE_NAME} not running"
    fi
    rm -f "$PID_FILE" "$MQ_DIR/starting"
}

cmd="${1:-}"
[ "$#" -gt 0 ] && shift
setup_env
case "$cmd" in
    start)  do_start ;;
    stop)   do_stop ;;
    kill)   do_kill ;;
    wait)   do_wait ;;
    status)
        if beam_pid >/dev/null && amqp_ready; then
            echo "running (node ${NODE_NAME}, pid $(beam_pid), 127.0.0.1:${MQ_PORT})"
        else
            echo "stopped (node ${NODE_NAME})"
            exit 3
        fi
        ;;
    ctl)    exec "$RMQ_SBIN/rabbitmqctl" -n "$NODE_NAME" "$@" ;;
    *)      die "usage: rabbitmq.sh start|stop|kill|status|wait|ctl ARGS..." ;;
esac
