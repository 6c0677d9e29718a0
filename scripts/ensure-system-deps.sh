#!/usr/bin/env bash
# Make sure the servers the test suite starts for itself are installed:
# PostgreSQL (initdb, pg_ctl, postgres) and redis-server, plus Mail::DKIM (with
# CryptX for Ed25519), the independent verifier of Warta's DKIM signatures, and
# Debian's chromium, the real browser the public-page tests drive with Playwright,
# SpamAssassin's spamd and ClamAV's clamd for the content-safety tests, and node with
# npm, which install the console's front-end packages (`make assets`).
# Idempotent, and a no-op costing milliseconds when all are present. Starts no daemons.
set -euo pipefail

have_pg_server() {
    if command -v initdb && command -v pg_ctl && command -v postgres; then
        return 0
    fi >/dev/null 2>&1
    local dir
    for dir in /usr/lib/postgresql/*/bin; do
        [[ -x $dir/initdb && -x $dir/pg_ctl && -x $dir/postgres ]] && return 0
    done
    return 1
}

have_redis_server() {
    command -v redis-server >/dev/null 2>&1 || [[ -x /usr/bin/redis-server ]]
}

have_mail_dkim() {
    perl -MMail::DKIM::Verifier -MCrypt::PK::Ed25519 -e 1 >/dev/null 2>&1
}

have_chromium() {
    [[ -x /usr/lib/chromium/chromium ]]
}

have_spamd() {
    command -v spamd >/dev/null 2>&1 || [[ -x /usr/sbin/spamd ]]
}

have_clamd() {
    command -v clamd >/dev/null 2>&1 || [[ -x /usr/sbin/clamd ]]
}

have_node() {
    command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1
}

missing=()
have_pg_server || missing+=(postgresql)
have_redis_server || missing+=(redis-server)
have_mail_dkim || missing+=(libmail-dkim-perl libcryptx-perl)
have_chromium || missing+=(chromium)
have_spamd || missing+=(spamd)
have_clamd || missing+=(clamav-daemon)
have_node || missing+=(nodejs npm)
((${#missing[@]} == 0)) && exit 0

echo "ensure-system-deps: installing ${missing[*]}" >&2

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-system-deps: no apt-get here; install ${missing[*]} yourself" >&2
    exit 1
fi

if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -- bash "${BASH_SOURCE[0]}" "$@"
    fi
    echo "ensure-system-deps: need root (or sudo) to apt-get install ${missing[*]}" >&2
    exit 1
fi

# Keep the packages' maintainer scripts from starting the system-wide services:
# the tests run their own throwaway servers. Docker images ship this file already.
policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
install() {
    apt-get install -y --no-install-recommends "${missing[@]}"
}
# A fresh machine may have no package lists yet: update only when needed.
if ! install; then
    apt-get update
    install
fi

have_pg_server || { echo "ensure-system-deps: PostgreSQL still missing" >&2; exit 1; }
have_redis_server || { echo "ensure-system-deps: redis-server still missing" >&2; exit 1; }
have_mail_dkim || { echo "ensure-system-deps: Mail::DKIM (libmail-dkim-perl) still missing" >&2; exit 1; }
have_chromium || { echo "ensure-system-deps: chromium still missing" >&2; exit 1; }
have_spamd || { echo "ensure-system-deps: spamd (Debian package spamd) still missing" >&2; exit 1; }
have_clamd || { echo "ensure-system-deps: clamd (clamav-daemon) still missing" >&2; exit 1; }
have_node || { echo "ensure-system-deps: node/npm still missing" >&2; exit 1; }
