#!/usr/bin/env bash
# Runs the whole suite twice: on SQLite (the embedded default) and on PostgreSQL (the scale
# path). The real servers (Dovecot, our SMTP listener, smtp-sink, the daemon) are started by the
# tests' own fixtures on free loopback ports and stopped afterwards.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
PG_URL="${GATEWAY_TEST_DATABASE_URL:-postgresql+asyncpg://postgres@127.0.0.1:5432/postgres}"

pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null || psql -h 127.0.0.1 -U postgres -tAc 'select 1' >/dev/null 2>&1; }

ensure_postgres() {
  pg_up && return 0
  if [ "$(id -u)" = "0" ]; then
    if ! ls /etc/postgresql/*/main >/dev/null 2>&1 && command -v apt-get >/dev/null; then
      echo "== installing PostgreSQL (none answers on 127.0.0.1:5432)"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    fi
    for v in $(ls /etc/postgresql 2>/dev/null); do
      pg_ctlcluster --skip-systemctl-redirect "$v" main start 2>/dev/null || true
    done
    for _ in $(seq 1 30); do pg_up && return 0; sleep 0.5; done
  fi
  return 1
}

run() { "$PY" -m pytest -q -p no:cacheprovider --timeout=300 "$@"; }

pg_suite() {
  # Only the pure steps (classify, reply, compose), the relay transports and the layer walk
  # never open a store; they run on SQLite and are the same on any database.
  GATEWAY_TEST_DATABASE_URL="$PG_URL" run -m "not sqlite_only" \
    tests/test_pipeline.py tests/test_corpus.py tests/test_notify.py tests/test_hostile.py \
    tests/test_lifecycle.py tests/test_api.py tests/test_story.py tests/test_smtp.py tests/test_imap.py \
    tests/test_daemon.py tests/test_multinode.py tests/test_credentials.py tests/test_imap_oauth.py \
    tests/test_portal_store.py tests/test_portal_http.py tests/test_portal_browser.py tests/test_portal_sso.py \
    tests/test_faults.py \
    tests/test_crash.py tests/test_operations.py tests/test_cli_ops.py tests/test_attachments.py tests/test_stats.py \
    tests/test_privacy.py tests/test_privacy_story.py tests/test_store_edge.py tests/test_logs.py \
    tests/test_case_detail_queries.py tests/test_group_reads.py tests/test_queue_claims.py "$@"
}

# The two suites run side by side: each spends most of its time waiting on its daemons,
# Dovecot and the sinks (about half a core on average), and one after the other they took
# 9-10 minutes on this 2-core machine. The PostgreSQL suite's output follows the SQLite one's.
pg_log=$(mktemp)
trap 'rm -f "$pg_log"' EXIT

if ensure_postgres; then
  pg_suite "$@" >"$pg_log" 2>&1 &
  pg_pid=$!
else
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
  echo "!! PostgreSQL is not reachable on 127.0.0.1:5432 and could not be installed or started: !!"
  echo "!! the suite did NOT run against PostgreSQL.                                            !!"
  echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!"
fi

echo "== suite on SQLite"
run "$@"
rc=$?
[ $rc -eq 5 ] && { echo "no tests ran"; rc=1; }

if [ -n "${pg_pid:-}" ]; then
  wait "$pg_pid"
  pgrc=$?
  echo "== suite on PostgreSQL ($PG_URL): every test that touches the store"
  cat "$pg_log"
  [ $pgrc -eq 5 ] && { echo "no tests ran on PostgreSQL"; pgrc=1; }
  [ $pgrc -ne 0 ] && rc=$pgrc
elif [ -n "${CI:-}" ]; then
  rc=1
fi
exit $rc
