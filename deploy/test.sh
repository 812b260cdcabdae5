#!/usr/bin/env bash
# `make test`: the unit tests run beside the integration tests, in a second pytest
# process, so that CI's clean clone finishes well inside its budget on two cores.
#
# The unit tests need no shared service (pure code, chDB in-process, servers of their
# own on free loopback ports); the integration tests start and share the local stack.
# Both always run to the end; the command fails if either fails, including pytest's
# exit 5 ("no tests collected"). The unit run's output follows the integration run's
# (and stays in .run/logs/test-unit.log). PYTEST_ARGS go to both runs.
#
# The integration tests run in INTEGRATION_WORKERS pytest-xdist workers (default 2) on
# the one shared stack: most of their time is spent waiting (for a broker, a server, a
# processor's flush, an outage a test makes), not computing, so two at once finish in
# far less wall time on two cores. Each test has its own database, topics and app id
# (tests/conftest.py ``isolated``); a module stays on one worker and the cluster's
# modules share one (``--dist loadfile``, scopes set in tests/conftest.py).
# INTEGRATION_WORKERS=0 runs them in this process, one after the other.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
TIMEOUT="${PYTEST_TIMEOUT:-300}"
WORKERS="${INTEGRATION_WORKERS:-2}"
read -r -a extra <<< "${PYTEST_ARGS:-}"
parallel=()
if [ "$WORKERS" != "0" ]; then
    parallel=(-n "$WORKERS" --dist loadfile)
fi
mkdir -p .run/logs
unit_log=.run/logs/test-unit.log
started=$(date +%s)
"$PY" -m pytest -q --timeout="$TIMEOUT" --durations=15 -p no:cacheprovider \
    tests/unit "${extra[@]}" > "$unit_log" 2>&1 &
unit_pid=$!
trap 'kill "$unit_pid" 2>/dev/null' INT TERM
"$PY" -m pytest -q --timeout="$TIMEOUT" --durations=25 "${parallel[@]}" tests/integration \
    "${extra[@]}"
integration_rc=$?
wait "$unit_pid"
unit_rc=$?
echo
echo "== unit tests (run beside the integration tests; log: $unit_log)"
cat "$unit_log"
echo
echo "== make test: integration exit $integration_rc, unit exit $unit_rc," \
    "$(( $(date +%s) - started )) s in all"
[ "$integration_rc" -eq 0 ] && [ "$unit_rc" -eq 0 ]
