#!/bin/sh
# Serf event handler of the classic "Serf + load balancer" recipe: on every membership event,
# list the alive members tagged role=server and rewrite the nginx upstream file from them
# (written aside, then renamed, so nginx never reads half a file).
#
# The benchmark starts each Serf agent with this environment, which Serf passes on:
#   LB_SERF        the serf binary
#   LB_RPC_ADDR    this agent's RPC address
#   LB_UPSTREAMS   the upstream file to rewrite
#   LB_EVENTS      a log: one "<unix ns> <event> <member>" line per member in each event

set -u

case "${SERF_EVENT:-}" in
    member-join|member-leave|member-failed|member-update|member-reap) ;;
    *) cat >/dev/null; exit 0 ;;
esac

now=$(date +%s%N)
while read -r name _rest; do
    echo "$now $SERF_EVENT $name"
done >>"$LB_EVENTS"

tmp="$LB_UPSTREAMS.tmp.$$"
servers=$("$LB_SERF" members -rpc-addr="$LB_RPC_ADDR" -status=alive -tag role=server) || exit 1
{
    for port_name in 9345:rke2_supervisor 6443:rke2_api; do
        port=${port_name%%:*}
        echo "upstream ${port_name#*:} {"
        echo "$servers" | while read -r _name addr _rest; do
            [ -n "$addr" ] && echo "    server ${addr%:*}:$port max_fails=3 fail_timeout=5s;"
        done
        echo "}"
    done
} >"$tmp" && mv "$tmp" "$LB_UPSTREAMS"
