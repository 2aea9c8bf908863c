#!/usr/bin/env bash
# Writes a small golden data directory: the log, keys and master key a
# keymeter binary leaves after a fixed set of admin and usage calls, and the
# answers it gave, for tests/golden_data.rs to open with later builds.
#
#   scripts/golden-data.sh BIN OUT [plans]
#
# BIN is the keymeter binary of the release to capture (build it from that
# release's commit); with `plans` the run also defines plans and stages a
# migration (format 2 and later). Only log/, keys/ and the master key are
# kept: projections are rebuilt from the log on start. Nothing in the
# answers may depend on when they are read (node-locked seats, no leases).
set -euo pipefail
bin=$1
out=$2
plans=${3:-}
admin=km_test_admin_key_0123456789abcdef
tmp=$(mktemp -d)
pid=
cleanup() {
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; fi
    rm -rf "$tmp"
}
trap cleanup EXIT

"$bin" serve --data-dir "$tmp/data" --listen 127.0.0.1:0 \
    --bootstrap-admin-key "$admin" >"$tmp/out" 2>"$tmp/err" &
pid=$!
url=
for _ in $(seq 1 200); do
    url=$(sed -n 's/^keymeter listening on //p' "$tmp/out" | head -n1)
    [ -n "$url" ] && break
    sleep 0.05
done
[ -n "$url" ] || { cat "$tmp/err"; exit 1; }

api() { # METHOD PATH [BODY]
    curl -sf -X "$1" "$url$2" -H "authorization: Bearer $admin" \
        -H 'content-type: application/json' ${3:+-d "$3"}
}

api POST /api/v1/meters '{"slug":"calls","eventType":"api_call","aggregation":"COUNT"}' >/dev/null
seat=$(api POST /api/v1/licenses '{"product":"cad","customer":"acme","expires_at":"2099-01-01T00:00:00Z","policy":{"type":"seat","seats":{"max":3,"mode":"node_locked"}}}' | jq -r .id)
usage=$(api POST /api/v1/licenses '{"product":"api","customer":"beta","entitlements":["export"],"policy":{"type":"usage","usage":{"quotas":[{"meter":"calls","limit":100.25,"period":"lifetime","overage":"block"}]}}}' | jq -r .id)
api POST "/api/v1/licenses/$seat/seats" '{"fingerprint":"host-a","lease_token":"golden-token-0123456789abcdef"}' >/dev/null
api POST "/api/v1/licenses/$usage/suspend" '{"reason":"unpaid"}' >/dev/null
for i in 1 2 3; do
    api POST /api/v1/events "{\"specversion\":\"1.0\",\"id\":\"golden-$i\",\"source\":\"s\",\"type\":\"api_call\",\"subject\":\"$usage\"}" >/dev/null
done
paths=(/api/v1/meters /api/v1/licenses "/api/v1/licenses/$seat/seats" "/api/v1/meters/calls/query")
if [ "$plans" = plans ]; then
    api POST /api/v1/plans '{"name":"seats","entitlements":["basic"],"policy":{"type":"seat","seats":{"max":2,"mode":"floating","lease_ttl_s":3600}}}' >/dev/null
    api POST /api/v1/plans '{"name":"usage","policy":{"type":"usage","usage":{"quotas":[{"meter":"calls","limit":1,"period":"month","overage":"block"}]}}}' >/dev/null
    for c in a b c d; do
        api POST /api/v1/licenses "{\"product\":\"ide\",\"customer\":\"$c\",\"plan\":\"seats@1\"}" >/dev/null
    done
    mig=$(api POST /api/v1/migrations '{"selection":{"plan":"seats@1"},"target":"usage@1","rules":{"seats":"keep","quotas_from_seats":[{"meter":"calls","per_seat":500,"period":"month","overage":"allow"}]}}' | jq -r .id)
    api POST "/api/v1/migrations/$mig/dry-run" >/dev/null
    api POST "/api/v1/migrations/$mig/apply" '{"percent":50}' >/dev/null
    first=$(api GET "/api/v1/migrations/$mig" | jq -r '.steps[0].cursor')
    paths+=(/api/v1/plans "/api/v1/migrations/$mig" "/api/v1/licenses/$first/history")
fi
{
    echo '{'
    sep=
    for p in "${paths[@]}"; do
        printf '%s"%s": %s\n' "$sep" "$p" "$(api GET "$p")"
        sep=,
    done
    echo '}'
} | jq -S . >"$tmp/answers.json"

kill -TERM "$pid"
wait "$pid"
pid=
rm -rf "$out"
mkdir -p "$out/data"
cp -r "$tmp/data/log" "$tmp/data/keys" "$out/data/"
rm -f "$out/data/log/LOCK"
[ -f "$tmp/data/FORMAT" ] && cp "$tmp/data/FORMAT" "$out/data/"
cp "$tmp/data.master-key" "$out/"
cp "$tmp/answers.json" "$out/"
echo "wrote $out"
