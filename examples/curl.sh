#!/usr/bin/env bash
# A walk through the counter-mesh HTTP API with curl.
#
#   npm start                      # in another terminal: coordinator + 3 counters on this machine
#   bash examples/curl.sh          # or BASE=http://host:8080 API_KEY=... bash examples/curl.sh
#
# Every response is printed with its HTTP status. Running the script twice changes no count:
# adds are idempotent.
set -euo pipefail

BASE="${BASE:-http://localhost:8080}"
AUTH=()
if [[ -n "${API_KEY:-}" ]]; then AUTH=(-H "Authorization: Bearer ${API_KEY}"); fi

step() { printf '\n\033[1m# %s\033[0m\n' "$*"; }
call() {
  printf '$ curl %s\n' "$*"
  curl -sS ${AUTH[@]+"${AUTH[@]}"} -w '\n-> HTTP %{http_code}\n' "$@"
}

step "Is the coordinator up, and can it reach a ready counter? (200, or 503 while none is ready)"
call "$BASE/ready"

step "Add one item: a JSON object {id, tenant}"
call -X POST "$BASE/items" -H 'Content-Type: application/json' \
  -d '{"id": "order-1001", "tenant": "acme"}'

step "Add a batch: a JSON array of items (up to MAX_BATCH)"
call -X POST "$BASE/items" -H 'Content-Type: application/json' \
  -d '[{"id": "order-1002", "tenant": "acme"}, {"id": "order-1003", "tenant": "acme"}, {"id": "a-1", "tenant": "acme corp/eu"}]'

step "Add a duplicate: accepted again, counted once"
call -X POST "$BASE/items" -H 'Content-Type: application/json' \
  -d '{"id": "order-1001", "tenant": "acme"}'

step "Count a tenant's distinct items"
call "$BASE/items/acme/count"

step "Count a tenant whose name needs percent-encoding: 'acme corp/eu' -> acme%20corp%2Feu"
call "$BASE/items/acme%20corp%2Feu/count"

step "A bad item is refused with 400 naming the item and the field"
call -X POST "$BASE/items" -H 'Content-Type: application/json' \
  -d '[{"id": "ok", "tenant": "acme"}, {"id": "", "tenant": "acme"}]'

step "The counters this coordinator knows, their readiness and size"
call "$BASE/counters"

step "Prometheus metrics of the coordinator (a few lines of them; METRICS=off turns them off)"
printf '$ curl %s | grep items_accepted\n' "$BASE/metrics"
curl -sS ${AUTH[@]+"${AUTH[@]}"} "$BASE/metrics" | grep '^counter_mesh_items_accepted_total' || true

step "The live status page is at $BASE/ (open it in a browser; with API_KEY, $BASE/#key=<API_KEY>)"

step "Liveness of the coordinator process itself (no API key needed)"
call "$BASE/health"
