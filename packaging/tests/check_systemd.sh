#!/bin/sh
# Checks systemd/pikod.service: `systemd-analyze verify` finds nothing, and
# `systemd-analyze security --offline=true` rates its exposure at 3.0 or below.
# Usage: check_systemd.sh PATH-TO-PIKOD
#
# The unit names /usr/sbin/pikod, which exists only once the package is installed (the
# install test verifies the installed unit as is); here a copy of the unit points at the
# binary just built, and man page links are not looked up.
set -eu

pikod=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
root=$(cd "$(dirname "$0")/../.." && pwd)
unit=$root/systemd/pikod.service
max=3.0

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sed "s|/usr/sbin/pikod|$pikod|g" "$unit" >"$tmp/pikod.service"

# verify prints problems on stderr and may still exit 0: any output is a failure.
if ! systemd-analyze verify --man=no "$tmp/pikod.service" >"$tmp/verify" 2>&1 ||
	[ -s "$tmp/verify" ]; then
	echo "systemd-check: systemd-analyze verify failed:" >&2
	cat "$tmp/verify" >&2
	exit 1
fi
echo "systemd-check: verify ok"

systemd-analyze security --offline=true "$tmp/pikod.service" >"$tmp/security" 2>&1 || true
level=$(sed -n 's/.*Overall exposure level for pikod.service: \([0-9.]*\).*/\1/p' "$tmp/security")
if [ -z "$level" ]; then
	echo "systemd-check: no exposure level in the output of systemd-analyze security:" >&2
	cat "$tmp/security" >&2
	exit 1
fi
if ! awk -v l="$level" -v m="$max" 'BEGIN { exit !(l + 0 <= m + 0) }'; then
	echo "systemd-check: exposure $level is above $max:" >&2
	grep '✗' "$tmp/security" >&2 || true
	exit 1
fi
echo "systemd-check: security exposure $level (at most $max)"
