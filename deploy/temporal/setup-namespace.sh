#!/bin/sh
# Creates the namespace Stepflow runs in and registers Stepflow's search attributes on it (the
# same ones `stepflow dev` registers on the dev server: runtime/devserver.py SEARCH_ATTRIBUTES).
# A one-shot (`temporal-namespace` in docker-compose.yml) that the workers wait for.
#
# Safe to run again: what exists already is left as it is (the retention of an existing
# namespace too: change it with `temporal operator namespace update`).
#
# Environment (from docker-compose.yml): TEMPORAL_ADDRESS, TEMPORAL_NAMESPACE,
# TEMPORAL_NAMESPACE_RETENTION (a duration such as 720h).
set -eu

SEARCH_ATTRIBUTES="StepflowPipeline=Keyword StepflowStatus=Keyword StepflowRerunOf=Keyword"

: "${TEMPORAL_ADDRESS:?the Temporal frontend, host:port}"
namespace="${TEMPORAL_NAMESPACE:-default}"
retention="${TEMPORAL_NAMESPACE_RETENTION:-720h}"

# The frontend binds IPv4 only: use the host's IPv4 address, so the CLI never tries an IPv6
# one first (as Temporal's own compose files do). Where that can't be looked up, the name.
host="${TEMPORAL_ADDRESS%:*}"
ipv4="$(getent ahostsv4 "$host" 2>/dev/null | awk 'NR == 1 { print $1 }')"
if [ -n "$ipv4" ]; then
    TEMPORAL_ADDRESS="$ipv4:${TEMPORAL_ADDRESS##*:}"
fi
export TEMPORAL_ADDRESS

# retry N COMMAND...: the server answers before it is ready, and a new namespace takes a few
# seconds to reach every frontend's cache.
retry() {
    attempts=$1
    shift
    tried=1
    until "$@"; do
        if [ "$tried" -ge "$attempts" ]; then
            echo "temporal-namespace: gave up after $attempts attempts: $*" >&2
            return 1
        fi
        tried=$((tried + 1))
        sleep 2
    done
}

echo "temporal-namespace: waiting for the Temporal server at $TEMPORAL_ADDRESS"
retry 90 temporal operator cluster health

if temporal operator namespace describe --namespace "$namespace" >/dev/null 2>&1; then
    echo "temporal-namespace: namespace $namespace exists"
else
    echo "temporal-namespace: creating namespace $namespace (retention $retention)"
    retry 5 temporal operator namespace create --namespace "$namespace" --retention "$retention"
fi
retry 30 temporal operator namespace describe --namespace "$namespace" >/dev/null

existing="$(retry 30 temporal operator search-attribute list --namespace "$namespace")"
for attribute in $SEARCH_ATTRIBUTES; do
    name="${attribute%%=*}"
    type="${attribute#*=}"
    if printf '%s\n' "$existing" | grep -qw "$name"; then
        echo "temporal-namespace: search attribute $name exists"
    else
        echo "temporal-namespace: registering search attribute $name ($type)"
        retry 15 temporal operator search-attribute create \
            --namespace "$namespace" --name "$name" --type "$type"
    fi
done
echo "temporal-namespace: namespace $namespace is ready for Stepflow"
