#!/bin/bash
# Start RabbitMQ on the host for the workload tests (idempotent), bound to 127.0.0.1 only.
# Called by scripts/test-services.sh.
set -euo pipefail
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }

# --- RabbitMQ on the host (workload tests run kvmple-perftest against it) ---------------
# Bound to loopback only: AMQP (5672), epmd (4369) and Erlang distribution (25672).
# "Ready" means a real AMQP connection succeeds (python3-amqp), not just "process exists".
amqp_accepts() {
    /usr/bin/python3 - <<'EOF' 2>/dev/null
import amqp
c = amqp.Connection(host="127.0.0.1:5672", userid="guest", password="guest", connect_timeout=3)
c.connect()
c.close()
EOF
}

start_rabbitmq() {
    if amqp_accepts; then
        say "rabbitmq: already accepting AMQP on 127.0.0.1:5672"
        return 0
    fi
    if ! command -v rabbitmq-server >/dev/null 2>&1 && [ ! -x /usr/sbin/rabbitmq-server ]; then
        say "rabbitmq: rabbitmq-server not installed (scripts/test-packages.txt)"
        return 1
    fi
    if ! /usr/bin/python3 -c 'import amqp' 2>/dev/null; then
        say "rabbitmq: python3-amqp not installed (scripts/test-packages.txt)"
        return 1
    fi
    say "rabbitmq: starting on 127.0.0.1"
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export ERL_EPMD_ADDRESS=127.0.0.1
    export RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS='-kernel inet_dist_use_interface {127,0,0,1}'
    # A node that is half up (process alive, AMQP not answering) is left to finish starting;
    # only start a new one when no beam of the rabbit node exists.
    if ! pgrep -u rabbitmq -f 'beam.*rabbit' >/dev/null 2>&1; then
        /usr/sbin/rabbitmq-server -detached >/dev/null 2>&1 || true
    fi
    for _ in $(seq 1 120); do
        if amqp_accepts; then
            say "rabbitmq: accepting AMQP on 127.0.0.1:5672"
            return 0
        fi
        sleep 1
    done
    say "rabbitmq: did not accept AMQP connections within 120 s (see /var/log/rabbitmq/)"
    return 1
}

start_rabbitmq
