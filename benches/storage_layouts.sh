#!/usr/bin/env bash
# Bytes per issuance on PostgreSQL under today's schema and under more
# compact layouts that no migration has adopted: how far each step of a
# re-layout would take the storage of an issuance (credential row + audit
# event, with their indexes). Each layout is filled with the same synthetic
# issuances, in batches as the group-commit writer commits them: one
# system, one grant, eight workloads, time-ordered (UUIDv7-like) ids that
# reach the database slightly out of order, as concurrent requests mint
# them before their batch commits.
#
#   benches/storage_layouts.sh [postgres://postgres@127.0.0.1:5432/test] [issuances]
#
# Needs psql and a server where the URL's user may create databases; the
# scratch databases (halflife_layout_*) are dropped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
base="${1:-postgres://postgres@127.0.0.1:5432/test}"
n="${2:-100000}"
psql_on() { psql -q -X -v ON_ERROR_STOP=1 "${base%/*}/$1" "${@:2}"; }

# Ids as the broker mints them (UUIDv7: time first), committed in batches
# of up to 64 in an order that differs from minting order.
ids="CREATE TEMP TABLE ids AS SELECT i,
  decode(lpad(to_hex((i / 64) * 64 + (i * 37) % 64), 16, '0'), 'hex') || substring(uuid_send(gen_random_uuid()) FROM 9 FOR 8) AS jti,
  decode(lpad(to_hex(i), 16, '0'), 'hex') || substring(uuid_send(gen_random_uuid()) FROM 9 FOR 8) AS req,
  decode(lpad(to_hex(i), 16, '0'), 'hex') || substring(uuid_send(gen_random_uuid()) FROM 9 FOR 8) AS att
  FROM generate_series(1, $n) i;"
batches="DO \$\$ BEGIN FOR b IN 0..($n / 100 - 1) LOOP PERFORM fill(b * 100 + 1, b * 100 + 100); END LOOP; END \$\$;"

# Today's schema: every migration, then rows as the writer stores them.
current="
INSERT INTO owners VALUES ('o1', 'O', 'o@example.com', 'active', 9999999999, 0, 0);
INSERT INTO systems (id, name, purpose, business_owner, technical_owner, tier, state, created_at, updated_at)
  VALUES ('bench', 'b', 'p', 'o1', 'o1', 'pilot', 'active', 0, 0);
INSERT INTO workloads (issuer, subject) SELECT 'https://issuer.example', 'spiffe://bench/agent-' || i FROM generate_series(1, 8) i;
INSERT INTO audit_names (name) SELECT 'name-' || i FROM generate_series(1, 20) i;
ALTER TABLE audit_events DISABLE TRIGGER audit_events_append_only;
$ids
CREATE FUNCTION fill(lo bigint, hi bigint) RETURNS void LANGUAGE sql AS \$f\$
  INSERT INTO credentials (id, jti, kind, system_id, exp, workload_id)
    SELECT i, jti, 'jwt', 'bench', 1800000900 + i / 8000, 1 + i % 8 FROM ids WHERE i BETWEEN lo AND hi;
  INSERT INTO audit_events (seq, time_ms, iat, exp, actor_id, owners_id, source_id, attestation_issuer_id,
      subject_id, audience_id, scopes_id, kind, outcome, system_id, grant_id, jti, request_id, attestation_id, hash)
    SELECT i, 1800000000000 + i / 8, 1800000000 + i / 8000, 1800000900 + i / 8000, 1 + i % 8, 9, 10, 11,
      1 + i % 8, 12, 13, 'credential.issued', 'success', 'bench', 'bench-agents', jti, req, att, sha256(jti)
    FROM ids WHERE i BETWEEN lo AND hi;
\$f\$;
$batches"

# Compact: a credential row keyed by its issuance event's seq (its jti,
# grant, audience, scopes and iat read from the event); kinds, outcomes,
# systems and grants as small ids; ids in PostgreSQL's 16-byte uuid type
# (another form of id in a text column beside it); the same indexes.
# $1: 'hash' to store each event's chain hash, or 'sparse' to store none
# (a chain hash kept every so many events instead, not counted here);
# $2: 'by_system_id' to keep credentials' own index by (system, id), or
# 'through_events' to list a system's credentials through the events'
# index by (system, seq) instead.
compact() {
  local system_id_index=""
  [ "$2" = by_system_id ] && system_id_index="CREATE INDEX credentials_by_system_id ON credentials (system_id, id);"
  local hash="sha256(jti)"
  [ "$1" = sparse ] && hash="NULL"
  echo "
CREATE TABLE credentials (
  id bigint PRIMARY KEY, exp bigint NOT NULL, workload_id bigint NOT NULL, system_id int NOT NULL,
  kind smallint NOT NULL, revoked_at bigint, revoked_reason text, secret_hash text, db_role text,
  role_state text, grant_id int, audience int, scopes int, iat bigint);
CREATE INDEX credentials_by_system ON credentials (system_id, exp);
$system_id_index
CREATE INDEX credentials_by_workload ON credentials (workload_id);
CREATE UNIQUE INDEX credentials_by_secret_hash ON credentials (secret_hash) WHERE secret_hash IS NOT NULL;
CREATE INDEX credentials_live_roles ON credentials (role_state) WHERE role_state IN ('live', 'dropping');
CREATE TABLE audit_events (
  seq bigint PRIMARY KEY, time_ms bigint NOT NULL, iat bigint, exp bigint, kind int NOT NULL,
  outcome smallint NOT NULL, system_id int, grant_id int, actor_id int, owners_id int, source_id int,
  attestation_issuer_id int, subject_id int, audience_id int, scopes_id int, detail_id int, jti uuid,
  request_id uuid, attestation_id uuid, hash bytea, reason text, detail text, other_ids text);
CREATE INDEX audit_by_jti ON audit_events (jti);
CREATE INDEX audit_by_kind ON audit_events (kind, seq) WHERE kind <> 1;
CREATE INDEX audit_by_subject ON audit_events (subject_id, seq);
CREATE INDEX audit_by_system ON audit_events (system_id, seq);
CREATE INDEX audit_by_time ON audit_events (time_ms);
$ids
CREATE FUNCTION fill(lo bigint, hi bigint) RETURNS void LANGUAGE sql AS \$f\$
  INSERT INTO credentials (id, exp, workload_id, system_id, kind)
    SELECT i, 1800000900 + i / 8000, 1 + i % 8, 1, 1 FROM ids WHERE i BETWEEN lo AND hi;
  INSERT INTO audit_events (seq, time_ms, iat, exp, kind, outcome, system_id, grant_id, actor_id, owners_id,
      source_id, attestation_issuer_id, subject_id, audience_id, scopes_id, jti, request_id, attestation_id, hash)
    SELECT i, 1800000000000 + i / 8, 1800000000 + i / 8000, 1800000900 + i / 8000, 1, 1, 1, 2, 1 + i % 8, 9,
      10, 11, 1 + i % 8, 12, 13, encode(jti, 'hex')::uuid, encode(req, 'hex')::uuid, encode(att, 'hex')::uuid, $hash
    FROM ids WHERE i BETWEEN lo AND hi;
\$f\$;
$batches"
}

measure="SELECT COALESCE(string_agg(format('%s %s', name, round(bytes / $n.0)), ', ' ORDER BY bytes DESC, name), '')
  || format(' = %s bytes per issuance', round(SUM(bytes) / $n.0))
FROM (SELECT relname AS name, pg_table_size(oid) AS bytes FROM pg_class WHERE relname IN ('credentials', 'audit_events')
      UNION ALL SELECT i.relname, pg_relation_size(i.oid) FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid
      WHERE x.indrelid IN ('credentials'::regclass, 'audit_events'::regclass)) parts;"

run() {
  local name="halflife_layout_$1" label="$2"
  psql_on "${base##*/}" -c "DROP DATABASE IF EXISTS $name" -c "CREATE DATABASE $name"
  if [ "$1" = current ] || [ "$1" = full_pages ]; then
    for migration in migrations/postgres/*.sql; do psql_on "$name" -f "$migration"; done
  fi
  if [ "$1" = full_pages ]; then
    for index in audit_events_pkey audit_by_jti audit_by_kind audit_by_subject audit_by_system audit_by_time; do
      psql_on "$name" -c "ALTER INDEX $index SET (fillfactor = 100)"
    done
  fi
  printf '%-58s ' "$label"
  psql_on "$name" -c "$3" >/dev/null
  psql_on "$name" -c "VACUUM ANALYZE credentials, audit_events"
  psql_on "$name" -tA -c "$measure"
  psql_on "${base##*/}" -c "DROP DATABASE $name WITH (FORCE)"
}

echo "PostgreSQL $(psql_on "${base##*/}" -tA -c 'SHOW server_version'), $n issuances"
run current "today's schema (migrations/postgres)" "$current"
run full_pages "today's schema, the audit indexes at fillfactor 100" "$current"
run compact "compact layout" "$(compact hash by_system_id)"
run through_events "compact, credentials listed through the events' index" "$(compact hash through_events)"
run sparse "compact, no chain hash stored per event" "$(compact sparse by_system_id)"
run both "compact, both" "$(compact sparse through_events)"
