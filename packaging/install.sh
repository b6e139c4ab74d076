#!/bin/sh
# Installs pikod's files as listed in packaging/files.txt: the one file list shared by
# `make install-package`, debian/rules and the rpm spec.
#
#   install.sh install     copy every file to $DESTDIR + its destination
#   install.sh list        print the destinations (no DESTDIR), one per line
#   install.sh rpm-files   print the list as rpm %files lines (rpm macros for directories)
#
# Directories come from the environment; the defaults suit a distribution package:
#   PREFIX=/usr SBINDIR BINDIR MANDIR UNITDIR SYSUSERSDIR TMPFILESDIR SYSCTLDIR DOCDIR
#   SYSCONFDIR=/etc BUILD=build DESTDIR=
# Run from anywhere: sources are taken relative to the source tree root.
set -eu

ROOT=$(cd "$(dirname "$0")/.." && pwd)
PREFIX=${PREFIX:-/usr}
SBINDIR=${SBINDIR:-$PREFIX/sbin}
BINDIR=${BINDIR:-$PREFIX/bin}
MANDIR=${MANDIR:-$PREFIX/share/man}
UNITDIR=${UNITDIR:-$PREFIX/lib/systemd/system}
SYSUSERSDIR=${SYSUSERSDIR:-$PREFIX/lib/sysusers.d}
TMPFILESDIR=${TMPFILESDIR:-$PREFIX/lib/tmpfiles.d}
SYSCTLDIR=${SYSCTLDIR:-$PREFIX/lib/sysctl.d}
DOCDIR=${DOCDIR:-$PREFIX/share/doc/pikod}
SYSCONFDIR=${SYSCONFDIR:-/etc}
BUILD=${BUILD:-build}
DESTDIR=${DESTDIR:-}

# subst MODE STRING: replaces the @NAME@ placeholders; MODE "rpm" uses rpm macros.
subst() {
	if [ "$1" = rpm ]; then
		printf '%s\n' "$2" | sed -e 's|@SBINDIR@|%{_sbindir}|' -e 's|@BINDIR@|%{_bindir}|' \
			-e 's|@MANDIR@|%{_mandir}|' -e 's|@UNITDIR@|%{_unitdir}|' \
			-e 's|@SYSUSERSDIR@|%{_sysusersdir}|' -e 's|@TMPFILESDIR@|%{_tmpfilesdir}|' \
			-e 's|@SYSCTLDIR@|%{_sysctldir}|' -e 's|@SYSCONFDIR@|%{_sysconfdir}|' \
			-e 's|@DOCDIR@|%{_docdir}/pikod|'
	else
		printf '%s\n' "$2" | sed -e "s|@SBINDIR@|$SBINDIR|" -e "s|@BINDIR@|$BINDIR|" \
			-e "s|@MANDIR@|$MANDIR|" -e "s|@UNITDIR@|$UNITDIR|" \
			-e "s|@SYSUSERSDIR@|$SYSUSERSDIR|" -e "s|@TMPFILESDIR@|$TMPFILESDIR|" \
			-e "s|@SYSCTLDIR@|$SYSCTLDIR|" -e "s|@SYSCONFDIR@|$SYSCONFDIR|" \
			-e "s|@DOCDIR@|$DOCDIR|" -e "s|@BUILD@|$BUILD|"
	fi
}

# The unit names /usr/sbin/pikod; an install elsewhere gets its own path written in.
install_unit() {
	sed "s|/usr/sbin/pikod|$SBINDIR/pikod|g" "$1" >"$2.tmp"
	chmod "$3" "$2.tmp"
	mv "$2.tmp" "$2"
}

entries() {
	grep -v -e '^#' -e '^[[:space:]]*$' "$ROOT/packaging/files.txt"
}

cmd=${1:-}
case $cmd in
install)
	entries | while read -r kind mode src dst; do
		src=$(subst path "$src")
		dst=$DESTDIR$(subst path "$dst")
		case $src in /*) ;; *) src=$ROOT/$src ;; esac
		[ -f "$src" ] || { echo "install.sh: missing $src (run make first)" >&2; exit 1; }
		install -d -m 0755 "$(dirname "$dst")"
		case $dst in
		*.service) install_unit "$src" "$dst" "$mode" ;;
		*) install -m "$mode" "$src" "$dst" ;;
		esac
	done
	;;
list)
	entries | while read -r kind mode src dst; do subst path "$dst"; done
	;;
rpm-files)
	entries | while read -r kind mode src dst; do
		dst=$(subst rpm "$dst")
		case $kind in
		bin | data) echo "$dst" ;;
		conf) echo "%dir %{_sysconfdir}/pikod"; echo "%config(noreplace) $dst" ;;
		man) echo "$dst*" ;;
		doc) echo "%doc $dst" ;;
		*) echo "install.sh: unknown kind $kind" >&2; exit 1 ;;
		esac
	done
	;;
*)
	echo "usage: install.sh install|list|rpm-files" >&2
	exit 2
	;;
esac
