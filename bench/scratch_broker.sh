#!/bin/bash
#
# bench/scratch_broker.sh
#	Throwaway, loopback-only RabbitMQ node for benchmark runs.
#
# Usage: scratch_broker.sh start|wait|stop
#
# Environment:
#	MQ_DIR	 directory holding all of the node's state (required); the node's
#			 home, Mnesia database, logs, configuration and pid files live
#			 here and nothing is read from /etc/rabbitmq
#	MQ_PORT	 AMQP port on 127.0.0.1 (default 35672); the Erlang
#			 distribution port is MQ_PORT+1 and the node's private epmd
#			 listens on MQ_PORT+2, both on 127.0.0.1 only
#
# bench/run.sh uses test/scripts/rabbitmq.sh when it exists and falls back
# to this script otherwise; the command interface is the same.
#

set -euo pipefail

: "${MQ_DIR:?MQ_DIR must be set}"
MQ_PORT=${MQ_PORT:-35672}
DIST_PORT=$((MQ_PORT + 1))
EPMD_PORT=$((MQ_PORT + 2))
SERVER=/usr/lib/rabbitmq/bin/rabbitmq-server
START_TIMEOUT=${MQ_START_TIMEOUT:-90}

log() { echo "scratch_broker: $*" >&2; }

pid_alive()
{
	local f=$1
	[ -f "$f" ] && kill -0 "$(cat "$f")" 2>/dev/null
}

port_open()
{
	(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

do_start()
{
	if pid_alive "$MQ_DIR/server.pid"; then
		log "already running (pid $(cat "$MQ_DIR/server.pid"))"
		return 0
	fi
	if port_open "$MQ_PORT" || port_open "$DIST_PORT" ||
		port_open "$EPMD_PORT"; then
		log "one of ports $MQ_PORT, $DIST_PORT, $EPMD_PORT is in use"
		return 1
	fi

	mkdir -p "$MQ_DIR/home" "$MQ_DIR/mnesia" "$MQ_DIR/log"
	echo '[].' > "$MQ_DIR/enabled_plugins"
	: > "$MQ_DIR/rabbitmq-env.conf"
	cat > "$MQ_DIR/rabbitmq.conf" <<EOF
listeners.tcp.default = 127.0.0.1:$MQ_PORT
log.console = false
log.file.level = info
EOF

	# A private epmd, so the node never registers with a shared one.
	epmd -address 127.0.0.1 -port "$EPMD_PORT" \
		> "$MQ_DIR/log/epmd.out" 2>&1 &
	echo $! > "$MQ_DIR/epmd.pid"

	(
		export HOME="$MQ_DIR/home"
		export ERL_EPMD_ADDRESS=127.0.0.1
		export ERL_EPMD_PORT=$EPMD_PORT
		export RABBITMQ_NODENAME="benchmq$MQ_PORT@localhost"
		export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
		export RABBITMQ_NODE_PORT=$MQ_PORT
		export RABBITMQ_DIST_PORT=$DIST_PORT
		export RABBITMQ_CONF_ENV_FILE="$MQ_DIR/rabbitmq-env.conf"
		export RABBITMQ_CONFIG_FILE="$MQ_DIR/rabbitmq.conf"
		export RABBITMQ_ADVANCED_CONFIG_FILE="$MQ_DIR/advanced.config"
		export RABBITMQ_ENABLED_PLUGINS_FILE="$MQ_DIR/enabled_plugins"
		export RABBITMQ_MNESIA_BASE="$MQ_DIR/mnesia"
		export RABBITMQ_LOG_BASE="$MQ_DIR/log"
		export RABBITMQ_PID_FILE="$MQ_DIR/rabbitmq.pid"
		export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}"
		cd "$MQ_DIR"
		exec setsid "$SERVER" > "$MQ_DIR/log/server.out" 2>&1 < /dev/null
	) &
	echo $! > "$MQ_DIR/server.pid"
	log "started node (pid $(cat "$MQ_DIR/server.pid")) on 127.0.0.1:$MQ_PORT"
}

do_wait()
{
	local i
	for ((i = 0; i < START_TIMEOUT * 2; i++)); do
		if ! pid_alive "$MQ_DIR/server.pid"; then
			log "node exited during start; see $MQ_DIR/log"
			tail -n 20 "$MQ_DIR/log/server.out" >&2 || true
			return 1
		fi
		if port_open "$MQ_PORT"; then
			return 0
		fi
		sleep 0.5
	done
	log "node not accepting connections after ${START_TIMEOUT}s"
	return 1
}

stop_pidfile()
{
	local f=$1 what=$2 group=$3 pid i
	[ -f "$f" ] || return 0
	pid=$(cat "$f")
	if kill -0 "$pid" 2>/dev/null; then
		kill -TERM "$pid" 2>/dev/null || true
		for ((i = 0; i < 60; i++)); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.5
		done
		if kill -0 "$pid" 2>/dev/null; then
			# The node was started with setsid, so its pid is also the
			# id of the process group holding the Erlang VM.
			log "$what (pid $pid) ignored SIGTERM; killing it"
			if [ "$group" = yes ]; then
				kill -KILL -- "-$pid" 2>/dev/null || true
			else
				kill -KILL "$pid" 2>/dev/null || true
			fi
		fi
	fi
	rm -f "$f"
}

do_stop()
{
	stop_pidfile "$MQ_DIR/server.pid" "node" yes
	stop_pidfile "$MQ_DIR/epmd.pid" "epmd" no
}

case "${1:-}" in
	start) do_start ;;
	wait) do_wait ;;
	stop) do_stop ;;
	*)
		echo "usage: $0 start|wait|stop" >&2
		exit 2
		;;
esac
