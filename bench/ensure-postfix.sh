#!/usr/bin/env bash
# Make sure Postfix is installed for the benchmarks: `postfix` and `postconf` run the private
# peer instance, `smtp-source` and `smtp-sink` are the C client and sink. The system-wide
# Postfix is kept from starting (policy-rc.d, as scripts/ensure-system-deps.sh does for its
# packages) and left unconfigured ("No configuration"): the benchmarks start their own
# instance on a free loopback port. Idempotent; a no-op when all four are present.
set -euo pipefail

have_postfix() {
    local tool
    for tool in postfix postconf smtp-source smtp-sink; do
        command -v "$tool" >/dev/null 2>&1 || [[ -x /usr/sbin/$tool ]] || return 1
    done
}

have_postfix && exit 0
echo "ensure-postfix: installing postfix (for bench/: the peer, smtp-source, smtp-sink)" >&2

if ! command -v apt-get >/dev/null 2>&1; then
    echo "ensure-postfix: no apt-get here; install postfix yourself" >&2
    exit 1
fi

if ((EUID != 0)); then
    if command -v sudo >/dev/null 2>&1; then
        exec sudo -- bash "${BASH_SOURCE[0]}" "$@"
    fi
    echo "ensure-postfix: need root (or sudo) to apt-get install postfix" >&2
    exit 1
fi

policy=/usr/sbin/policy-rc.d
if [[ ! -e $policy ]]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy"
    chmod 755 "$policy"
    trap 'rm -f "$policy"' EXIT
fi

export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
install() {
    apt-get install -y --no-install-recommends postfix
}
# A fresh machine may have no package lists yet: update only when needed.
if ! install; then
    apt-get update
    install
fi

have_postfix || { echo "ensure-postfix: postfix still missing" >&2; exit 1; }
