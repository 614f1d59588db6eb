#!/bin/sh
# Creates Temporal's two PostgreSQL databases and brings their schemas to the version this
# admin-tools image ships. It replaces what the deprecated temporalio/auto-setup image did at
# start, as a one-shot (`temporal-schema` in docker-compose.yml) that the server waits for.
#
# Safe to run again: `create` skips an existing database, `setup-schema -v 0.0` skips a database
# that already has a schema, and `update-schema` applies only the versions not yet applied. So an
# upgrade is: raise the temporalio/admin-tools and temporalio/server tags together, and
# `docker compose up -d` (this runs first, then the new server starts on the new schema).
#
# Environment (from docker-compose.yml): POSTGRES_SEEDS (host), DB_PORT, POSTGRES_USER, and
# SQL_PASSWORD, which temporal-sql-tool reads itself, so the password is never on a command line.
set -eu

: "${POSTGRES_SEEDS:?the PostgreSQL host}"
: "${POSTGRES_USER:?the PostgreSQL user}"
: "${SQL_PASSWORD:?the PostgreSQL password}"
port="${DB_PORT:-5432}"
schema_dir=/etc/temporal/schema/postgresql/v12

sql_tool() {
    temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -p "$port" -u "$POSTGRES_USER" "$@"
}

setup() {
    database=$1
    versioned=$2
    echo "temporal-schema: database $database"
    sql_tool --db "$database" create
    sql_tool --db "$database" setup-schema -v 0.0
    sql_tool --db "$database" update-schema -d "$schema_dir/$versioned/versioned"
}

setup temporal temporal
setup temporal_visibility visibility
echo "temporal-schema: both databases are on the current schema"
