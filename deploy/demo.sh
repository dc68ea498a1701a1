#!/usr/bin/env bash
# The problem statement's example, end to end, on this machine:
# a 500-page Confluence space (simulated), a full sync, then 3 pages created,
# 2 updated and 1 deleted, then an incremental sync that processes just those 6.
#
# Starts its own redis-server (AOF on), the Confluence simulator, one
# coordinator and two workers, each a separate process on a free port, and
# stops them all on exit. Needs: target/release/tidemark, redis-server, curl, jq.
#
# TIDEMARK_DEMO_SINK=postgres (`make demo-postgres`) writes into a PostgreSQL
# server the script starts itself (initdb in a temp dir; as the postgres user
# when run as root) instead of a directory, and ends with a full-text query.
set -euo pipefail

here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$here/target/release/tidemark"
[ -x "$bin" ] || { echo "build first: cargo build --release" >&2; exit 1; }

work="$(mktemp -d -t tidemark-demo.XXXXXX)"
sink_kind="${TIDEMARK_DEMO_SINK:-directory}"
pgdir=""
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
  [ -z "$pgdir" ] || rm -rf "$pgdir"
}
trap cleanup EXIT INT TERM

free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$(( (RANDOM % 20000) + 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then echo "$p"; return; fi
  done
  echo "no free port found" >&2; exit 1
}

wait_for() { # wait_for DESCRIPTION COMMAND...
  local what="$1"; shift
  for _ in $(seq 1 200); do "$@" >/dev/null 2>&1 && return 0; sleep 0.05; done
  echo "timed out waiting for $what" >&2; exit 1
}

redis_port=$(free_port)
sim_port=$(free_port)
mkdir -p "$work/redis" "$work/kb" "$work/logs"

echo "== starting redis-server on :$redis_port (AOF in $work/redis)"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --appendonly yes --save "" \
  >"$work/logs/redis.log" 2>&1 &
pids+=($!)
wait_for "redis" redis-cli -p "$redis_port" ping

echo "== starting the Confluence simulator on :$sim_port with 500 pages"
"$bin" simulate confluence --listen "127.0.0.1:$sim_port" --pages 500 >"$work/logs/sim.log" 2>&1 &
pids+=($!)
sim="http://127.0.0.1:$sim_port"
wait_for "simulator" curl -sf "$sim/_sim/stats"

sink_toml="kind = \"directory\"
path = \"$work/kb\""
if [ "$sink_kind" = postgres ]; then
  pg_bin="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)"
  [ -x "$pg_bin/initdb" ] || { echo "PostgreSQL not found: make deps installs it" >&2; exit 1; }
  pg_port=$(free_port)
  pgdir="$(mktemp -d -t tidemark-pg.XXXXXX)"
  as_pg=()
  if [ "$(id -u)" = 0 ]; then
    # PostgreSQL refuses to run as root: run it as the package's postgres user.
    chown -R postgres:postgres "$pgdir"
    as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
  fi
  echo "== starting PostgreSQL on :$pg_port (data in $pgdir)"
  "${as_pg[@]}" "$pg_bin/initdb" -D "$pgdir/data" -U tidemark --auth=trust -E UTF8 --locale=C >"$work/logs/initdb.log" 2>&1
  "${as_pg[@]}" "$pg_bin/postgres" -D "$pgdir/data" -p "$pg_port" -h 127.0.0.1 -k "$pgdir" >"$work/logs/postgres.log" 2>&1 &
  pids+=($!)
  wait_for "postgres" "$pg_bin/pg_isready" -q -h 127.0.0.1 -p "$pg_port"
  psql=("$pg_bin/psql" -X -q -h 127.0.0.1 -p "$pg_port" -U tidemark -d postgres)
  sink_toml="kind = \"postgres\"
url = \"postgres://tidemark@127.0.0.1:$pg_port/postgres\""
fi

cat >"$work/tidemark.toml" <<TOML
[redis]
url = "redis://127.0.0.1:$redis_port"

[sync]
page_size = 50

[sink]
$sink_toml

[api]
listen = ""

[[sources]]
id = "confluence-eng"
kind = "confluence"
[sources.settings]
base_url = "$sim"
space_key = "ENG"
TOML
export TIDEMARK_CONFIG="$work/tidemark.toml" RUST_LOG=warn

echo "== starting 1 coordinator and 2 workers"
"$bin" coordinator >"$work/logs/coordinator.log" 2>&1 & pids+=($!)
"$bin" worker >"$work/logs/worker-1.log" 2>&1 & pids+=($!)
"$bin" worker >"$work/logs/worker-2.log" 2>&1 & pids+=($!)

run_sync() { # run_sync LABEL [--full]
  local label="$1"; shift
  curl -sf -X POST "$sim/_sim/stats/reset" >/dev/null
  local json
  json=$("$bin" enqueue confluence-eng "$@" --wait --json --timeout 300)
  echo "$json" >"$work/$label.json"
  jq -r --arg l "$label" '"\($l): \(.docs_processed) processed (\(.upserted) upserted, \(.deleted) deleted, \(.skipped) skipped), \(.unchanged) unchanged by version, \(.api_calls) API calls, \(.wall_ms) ms wall, status \(.status)"' <<<"$json"
}

echo
echo "== full sync"
run_sync full --full
held_count() {
  if [ "$sink_kind" = postgres ]; then
    "${psql[@]}" -tAc "SELECT count(*) FROM documents WHERE source = 'confluence-eng'"
  else
    ls "$work/kb/confluence-eng/docs" | wc -l
  fi
}
echo "   documents in the knowledge base: $(held_count)"

echo
echo "== changing the space: 3 created, 2 updated, 1 deleted"
pages=$(curl -sf "$sim/_sim/pages")
# Leaves only: renaming or deleting a page with children changes its children too.
leaves=$(jq -r '[.[].parent_id] as $parents | [.[] | select(.id as $i | $parents | index($i) | not)]' <<<"$pages")
parent=$(jq -r '.[10].id' <<<"$pages")
for t in "Release notes 2.0" "Migration guide" "FAQ: pricing"; do
  body=$(jq -nc --arg t "$t" --arg p "$parent" '{title: $t, parent_id: $p, body: "<p>\($t)</p>"}')
  curl -sf -X POST -H 'content-type: application/json' -d "$body" "$sim/_sim/pages" >/dev/null
  echo "   created: $t"
done
for i in 20 30; do
  id=$(jq -r ".[$i].id" <<<"$leaves")
  curl -sf -X PUT -H 'content-type: application/json' -d '{"body":"<p>edited today</p>"}' "$sim/_sim/pages/$id" >/dev/null
  echo "   updated: $(jq -r ".[$i].title" <<<"$leaves")"
done
gone_id=$(jq -r '.[40].id' <<<"$leaves")
gone_title=$(jq -r '.[40].title' <<<"$leaves")
curl -sf -X DELETE "$sim/_sim/pages/$gone_id" >/dev/null
echo "   deleted: $gone_title (id $gone_id)"

echo
echo "== incremental sync"
run_sync incremental

echo
full_calls=$(jq .api_calls "$work/full.json"); inc_calls=$(jq .api_calls "$work/incremental.json")
full_docs=$(jq .docs_processed "$work/full.json"); inc_docs=$(jq .docs_processed "$work/incremental.json")
full_ms=$(jq .wall_ms "$work/full.json"); inc_ms=$(jq .wall_ms "$work/incremental.json")
echo "== full vs incremental, this run: documents ${full_docs} vs ${inc_docs}, API calls ${full_calls} vs ${inc_calls}, wall ${full_ms} ms vs ${inc_ms} ms"
still_held() {
  if [ "$sink_kind" = postgres ]; then
    [ "$("${psql[@]}" -tAc "SELECT count(*) FROM documents WHERE source = 'confluence-eng' AND id = '$gone_id'")" != 0 ]
  else
    [ -e "$work/kb/confluence-eng/docs/$gone_id.json" ]
  fi
}
if still_held; then
  echo "FAIL: deleted page \"$gone_title\" is still in the knowledge base" >&2
  exit 1
fi
echo "== deleted page \"$gone_title\" is no longer in the knowledge base: ok"
[ "$inc_docs" = 6 ] || { echo "FAIL: expected 6 documents processed, got $inc_docs" >&2; exit 1; }

# Who may read: a page restricted to one group (the simulator's seeded
# `engineering`), and a query as someone outside it and as someone in it.
users_group="group:6a7c1f4e-0b1d-4c38-9d5e-000000000001"
engineering="6a7c1f4e-0b1d-4c38-9d5e-000000000003"
# Every seeded reader at once: may read anything in the space.
insider=(--as "$users_group" --as "group:$engineering"
  --as "user:atlassian:557058:a11ce000-0000-4000-8000-000000000001"
  --as "user:atlassian:557058:b0b00000-0000-4000-8000-000000000002")
secret_id=$(jq -r '.[50].id' <<<"$leaves")
secret_title=$(jq -r '.[50].title' <<<"$leaves")
echo
echo "== restricting \"$secret_title\" to the group engineering (no new version: only the restriction scan sees it)"
curl -sf -X PUT -H 'content-type: application/json' \
  -d "{\"groups\":[{\"name\":\"engineering\",\"id\":\"$engineering\"}]}" \
  "$sim/_sim/pages/$secret_id/restrictions/read" >/dev/null
run_sync restricted
updated=$(jq .permissions_updated "$work/restricted.json")
echo "   documents with new readers, rewritten without fetching: $updated"
[ "$updated" -ge 1 ] || { echo "FAIL: the restriction changed no document's readers" >&2; exit 1; }
finds() { # finds PRINCIPAL-ARGS...: whether a query as them returns the restricted page
  "$bin" query confluence-eng "$secret_title" --limit 1000 --json "$@" 2>/dev/null \
    | jq -e --arg id "$secret_id" 'any(.[]; .id == $id)' >/dev/null
}
if finds --as "$users_group"; then
  echo "FAIL: a reader outside engineering still finds \"$secret_title\"" >&2
  exit 1
fi
finds "${insider[@]}" || { echo "FAIL: a reader in engineering no longer finds \"$secret_title\"" >&2; exit 1; }
echo "== tidemark query as $users_group: not found; as a member of engineering: found: ok"
if [ "$sink_kind" = postgres ]; then
  echo
  echo "== asking the knowledge base: websearch_to_tsquery('english', 'edited today')"
  "${psql[@]}" -c "SELECT title, array_to_string(breadcrumb, ' > ') AS place, ts_rank(search, q) AS rank
    FROM documents, websearch_to_tsquery('english', 'edited today') AS q
    WHERE source = 'confluence-eng' AND search @@ q ORDER BY rank DESC, title LIMIT 5"
fi
echo
"$bin" status confluence-eng --runs 2
echo "== demo done; stopping everything it started"
