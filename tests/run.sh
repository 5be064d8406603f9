#!/usr/bin/env bash
# Runs the whole suite. The real servers (Dovecot, our SMTP listener, smtp-sink, the daemon)
# are started by the tests' own fixtures on free loopback ports and stopped afterwards.
# PostgreSQL: a local server is used when one answers (GATEWAY_TEST_DATABASE_URL).
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
$PY -m pytest -q -p no:cacheprovider "$@"
rc=$?
# pytest exit 5 = no tests collected: that is a failure of the suite, not a pass.
[ $rc -eq 5 ] && { echo "no tests ran"; exit 1; }
exit $rc
