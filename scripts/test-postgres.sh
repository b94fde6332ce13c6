#!/bin/bash
# Start a PostgreSQL server for kvmple's store tests (idempotent), called by
# scripts/test-services.sh. Uses Debian's postgresql package (scripts/test-packages.txt):
# the distribution's cluster, listening on 127.0.0.1 only, with a role and database
#   postgresql://kvmple_test:kvmple_test@127.0.0.1:5432/kvmple_test
# The tests create a throw-away schema per test inside that database.
set -euo pipefail
say() { printf '\033[1m[setup]\033[0m %s\n' "$*" >&2; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

command -v pg_lsclusters >/dev/null || die "postgresql is not installed (scripts/test-packages.txt)"
read -r version name port status _ < <(pg_lsclusters --no-header | head -1) || true
if [ -z "${version:-}" ]; then
    version="$(ls /usr/lib/postgresql | sort -V | tail -1)"
    say "creating PostgreSQL cluster $version/main"
    pg_createcluster "$version" main >/dev/null
    read -r version name port status _ < <(pg_lsclusters --no-header | head -1)
fi
conf="/etc/postgresql/$version/$name/conf.d/kvmple-tests.conf"
want="listen_addresses = '127.0.0.1'"
if [ "$(cat "$conf" 2>/dev/null)" != "$want" ]; then
    echo "$want" >"$conf"
    [ "$status" = online ] && pg_ctlcluster "$version" "$name" restart
fi
if [ "$(pg_lsclusters --no-header | awk -v v="$version" -v n="$name" '$1==v && $2==n {print $4}')" != online ]; then
    say "starting PostgreSQL $version/$name on 127.0.0.1:$port"
    pg_ctlcluster "$version" "$name" start
fi
psql_admin() { runuser -u postgres -- psql -p "$port" -v ON_ERROR_STOP=1 -qtA "$@"; }
for _ in $(seq 1 30); do psql_admin -c 'select 1' >/dev/null 2>&1 && break; sleep 1; done
if [ "$(psql_admin -c "select 1 from pg_roles where rolname='kvmple_test'")" != 1 ]; then
    psql_admin -c "create role kvmple_test login password 'kvmple_test'"
fi
if [ "$(psql_admin -c "select 1 from pg_database where datname='kvmple_test'")" != 1 ]; then
    psql_admin -c "create database kvmple_test owner kvmple_test"
fi
say "PostgreSQL: postgresql://kvmple_test@127.0.0.1:$port/kvmple_test answers"
