#!/usr/bin/env bash
# Install everything careledger needs on a fresh Debian 12 machine; idempotent and
# fast (about a second) when everything is already there. It never starts a
# service: `careledger up` (or the test session) does that.
#
#   1. Debian packages: clickhouse-server + clickhouse-client (18.16), chromium +
#      chromium-driver (the console's browser tests), softhsm2 (the key store's PKCS#11
#      token), and only if `java` / `mvn` are
#      missing: openjdk-17-jre-headless / maven.
#   2. A virtualenv at <repo>/.venv with every package of requirements.lock, installed
#      with `pip install --require-hashes` (each file checked against its pinned SHA-256;
#      the lock is made by deploy/lock.sh from pyproject.toml), then careledger itself
#      editable with --no-deps (redone only when pyproject.toml or the lock changes).
#   3. The Apache Kafka jars (version from Settings.kafka_version) copied by Maven
#      (--strict-checksums) into deploy/kafka/lib/<version>/ and refused unless they are
#      exactly the files pinned in deploy/kafka/jars-<version>.sha256 (skipped when
#      present). Likewise the Apache ZooKeeper server jars (for ClickHouse's replicated
#      tables in the local cluster, ADR 0030) into deploy/zookeeper/lib/<version>/,
#      pinned in deploy/zookeeper/jars-<version>.sha256. Go checks litewitness's modules
#      against its checksum database.
#   4. litewitness and witnessctl, an unmodified third-party C2SP witness (Go module
#      filippo.io/torchwood, version pinned below) that the interoperability tests run
#      next to `careledger witness`: built with `go install` into deploy/witness/bin/
#      (git-ignored; skipped when that version is already there). Needs Go >= 1.21
#      (the go command fetches the toolchain the module asks for) and ssh-agent.
#   5. composecheck (deploy/compose/check/, a few lines of Go on compose-go, the
#      reference Compose parser): loads docker-compose.yml as `docker compose config`
#      does, for tests/unit/test_compose_spec.py on machines without Docker. Built with
#      `go build` into deploy/compose/check/bin/ (git-ignored; only when missing or
#      older than its sources; modules checked against go.sum). Needs Go >= 1.24.
#   6. testop (deploy/oidc/): the zitadel/oidc library's example OpenID Provider,
#      served over TLS, that the console's single sign-on test signs in against in
#      Chromium. Built like composecheck into deploy/oidc/bin/. Needs Go >= 1.26.
#
# Environment: PYTHON (interpreter for the venv, default python3; needs >= 3.11);
# GO (the go command, default `go` on PATH or /usr/local/go/bin/go).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
PYTHON="${PYTHON:-python3}"

say() { printf 'bootstrap: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || die "need root to run: $* (re-run as root or install the packages yourself)"
    else
        die "need root to run: $* (re-run as root or install the packages yourself)"
    fi
}

# --- 1. Debian packages ------------------------------------------------------
pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

missing=()
# chromium + chromium-driver: the console's tests drive a real headless browser (issue 13)
# softhsm2: the PKCS#11 token that holds the key store's key-encryption key (ADR 0037)
for pkg in clickhouse-server clickhouse-client chromium chromium-driver softhsm2; do
    pkg_installed "$pkg" || missing+=("$pkg")
done
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
command -v ssh-agent >/dev/null 2>&1 || missing+=(openssh-client)
if ! "$PYTHON" -c 'import ensurepip, venv' >/dev/null 2>&1 && [ ! -x "$VENV/bin/python" ]; then
    missing+=(python3-venv)
fi

stop_system_clickhouse() {
    # Debian's package may register a system service on the default ports 9000/8123.
    # We run our own server on our own ports: make sure the system one is not running.
    if [ -d /run/systemd/system ] && command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now clickhouse-server >/dev/null 2>&1 || true
    elif [ -x /etc/init.d/clickhouse-server ]; then
        # The init script's `status` matches any clickhouse-server binary, including
        # careledger's own (run as the invoking user); the system service runs as the
        # `clickhouse` user, and its `stop` only targets that user's process.
        if id clickhouse >/dev/null 2>&1 && pgrep -u clickhouse >/dev/null 2>&1; then
            say "stopping the system clickhouse-server service (careledger runs its own)"
            as_root /etc/init.d/clickhouse-server stop >/dev/null 2>&1 || true
        fi
        if command -v update-rc.d >/dev/null 2>&1; then
            as_root update-rc.d clickhouse-server disable >/dev/null 2>&1 || true
        fi
    fi
}

if [ "${#missing[@]}" -gt 0 ]; then
    say "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Keep maintainer scripts from starting services during the install.
    policy_created=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        policy_created=1
    fi
    trap 'if [ "$policy_created" = 1 ]; then as_root rm -f /usr/sbin/policy-rc.d; fi' EXIT
    as_root apt-get update -qq
    as_root apt-get install -y -qq --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        "${missing[@]}" </dev/null
    if [ "$policy_created" = 1 ]; then
        as_root rm -f /usr/sbin/policy-rc.d
        policy_created=0
    fi
    stop_system_clickhouse
fi

command -v java >/dev/null 2>&1 || die "java still not found: apt-get install openjdk-17-jre-headless"
command -v mvn >/dev/null 2>&1 || die "maven still not found: apt-get install maven"
[ -x /usr/sbin/clickhouse-server ] || command -v clickhouse-server >/dev/null 2>&1 \
    || command -v clickhouse >/dev/null 2>&1 \
    || die "clickhouse-server not installed: apt-get install clickhouse-server clickhouse-client"

# --- 2. virtualenv -------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is older than 3.11; set PYTHON=/path/to/python3.11"
    say "creating virtualenv $VENV"
    "$PYTHON" -m venv "$VENV"
fi

stamp="$VENV/.careledger-installed"
want="$(cat pyproject.toml requirements.lock | sha256sum | cut -d' ' -f1)"
have="$(cat "$stamp" 2>/dev/null || true)"
if [ "$want" != "$have" ] || [ ! -x "$VENV/bin/careledger" ]; then
    say "installing careledger and its dev and benchmark dependencies into $VENV"
    # Every package pinned with the SHA-256 of its files (requirements.lock, made by
    # deploy/lock.sh): a file the index serves with other bytes is refused. Then
    # careledger itself, editable, adding nothing (--no-deps, the locked setuptools).
    # benchmark extra: matplotlib, for `careledger benchmark`'s latency plot
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
        -r requirements.lock </dev/null
    # (setuptools warns about editable installs on stderr: shown only if it fails)
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps \
        --no-build-isolation -e . </dev/null 2>"$VENV/.careledger-install.log" \
        || { cat "$VENV/.careledger-install.log" >&2; die "pip install -e . failed"; }
    echo "$want" > "$stamp"
fi

# --- 3. Kafka and ZooKeeper jars -------------------------------------------------
"$VENV/bin/python" -m careledger.stack install-kafka >/dev/null
"$VENV/bin/python" -m careledger.stack install-zookeeper >/dev/null

# --- 4. litewitness (interoperability tests) -------------------------------------
GO="${GO:-$(command -v go || true)}"
if [ -z "$GO" ] && [ -x /usr/local/go/bin/go ]; then GO=/usr/local/go/bin/go; fi
TORCHWOOD_VERSION=v0.6.1
WITNESS_BIN="$ROOT/deploy/witness/bin"
witness_stamp="$WITNESS_BIN/.torchwood-version"
if [ "$(cat "$witness_stamp" 2>/dev/null || true)" != "$TORCHWOOD_VERSION" ] \
    || [ ! -x "$WITNESS_BIN/litewitness" ] || [ ! -x "$WITNESS_BIN/witnessctl" ]; then
    if [ -z "$GO" ]; then
        say "warning: go not found: litewitness is not built and the witness interoperability"
        say "         tests will fail; install Go >= 1.21 and re-run deploy/bootstrap.sh"
    else
        say "building litewitness and witnessctl (filippo.io/torchwood $TORCHWOOD_VERSION) into $WITNESS_BIN"
        mkdir -p "$WITNESS_BIN"
        GOBIN="$WITNESS_BIN" GOFLAGS=-buildvcs=false "$GO" install \
            "filippo.io/torchwood/cmd/litewitness@$TORCHWOOD_VERSION" \
            "filippo.io/torchwood/cmd/witnessctl@$TORCHWOOD_VERSION" </dev/null \
            || die "go install of filippo.io/torchwood $TORCHWOOD_VERSION failed (needs Go >= 1.21)"
        echo "$TORCHWOOD_VERSION" > "$witness_stamp"
    fi
fi

# go_build DIR NAME MIN_GO WHAT TEST: build the Go module in DIR into DIR/bin/NAME, only
# when missing or older than its sources (modules checked against its go.sum); without
# Go, say which TEST will fail.
go_build() {
    local dir="$1" name="$2" min_go="$3" what="$4" test="$5"
    local bin="$dir/bin/$name"
    if [ -x "$bin" ] && [ ! "$dir/main.go" -nt "$bin" ] && [ ! "$dir/go.mod" -nt "$bin" ] \
        && [ ! "$dir/go.sum" -nt "$bin" ]; then
        return 0
    fi
    if [ -z "$GO" ]; then
        say "warning: go not found: $name is not built and $test"
        say "         will fail; install Go >= $min_go and re-run deploy/bootstrap.sh"
        return 0
    fi
    say "building $name ($what, see ${dir#"$ROOT"/}/go.mod) into $dir/bin"
    (cd "$dir" && GOFLAGS=-buildvcs=false "$GO" build -o "bin/$name" . </dev/null) \
        || die "go build of ${dir#"$ROOT"/} failed (needs Go >= $min_go)"
}

# --- 5. composecheck (docker-compose.yml through the real Compose parser) ----------
go_build "$ROOT/deploy/compose/check" composecheck 1.24 compose-go \
    tests/unit/test_compose_spec.py

# --- 6. testop: the OpenID Provider of the single sign-on tests ------------------------
go_build "$ROOT/deploy/oidc" testop 1.26 "zitadel/oidc's example provider" \
    tests/integration/test_console_sso_browser.py

say "ok (start the services with: .venv/bin/careledger up)"
