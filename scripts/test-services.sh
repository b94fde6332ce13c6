#!/bin/bash
# Start the services the test tiers need on this host (idempotent). Called by
# scripts/setup-host.sh --test. Everything listens on 127.0.0.1 only.
set -euo pipefail
# results store tests: PostgreSQL on 127.0.0.1 (role/db kvmple_test)
"$(dirname "${BASH_SOURCE[0]}")/test-postgres.sh"
# workload tests: RabbitMQ on 127.0.0.1:5672 (guest/guest), really accepting AMQP
"$(dirname "${BASH_SOURCE[0]}")/test-rabbitmq.sh"
