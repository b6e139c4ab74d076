#!/bin/sh
# Installs what pikod needs to build and test, when it is missing. Idempotent:
# a machine that has everything runs no package manager at all.
set -eu

# Debian package : how to tell it is present (pkg-config name, or a file).
DEB_PKGS="
pkg-config:cmd:pkg-config
gcc:cmd:gcc
clang:cmd:clang
make:cmd:make
libuv1-dev:pc:libuv
libssl-dev:pc:openssl
libconfig-dev:pc:libconfig
liblmdb-dev:pc:lmdb
libcriterion-dev:pc:criterion
libhttp-parser-dev:file:/usr/include/http_parser.h
libjwt-dev:pc:libjwt
libjansson-dev:pc:jansson
libsystemd-dev:pc:libsystemd
libclang-rt-14-dev:file:/usr/lib/llvm-14/lib/clang/14.0.6/lib/linux/libclang_rt.fuzzer-x86_64.a
python3:file:/usr/bin/python3
python3-jwt:file:/usr/lib/python3/dist-packages/jwt/__init__.py
python3-cryptography:file:/usr/lib/python3/dist-packages/cryptography/__init__.py
curl:cmd:curl
nodejs:cmd:node
npm:cmd:npm
golang-go:cmd:go
golang-github-hashicorp-yamux-dev:file:/usr/share/gocode/src/github.com/hashicorp/yamux/session.go
golang-github-gorilla-websocket-dev:file:/usr/share/gocode/src/github.com/gorilla/websocket/conn.go
clang-format:cmd:clang-format
debhelper:cmd:dh
lintian:cmd:lintian
rpm:cmd:rpmbuild
rpmlint:cmd:rpmlint
python3-yaml:file:/usr/lib/python3/dist-packages/yaml/__init__.py
groff-base:cmd:groff
systemd:cmd:systemd-analyze
file:cmd:file
"

# `deps.sh bench`: what the benchmarks use on top (make bench, make bench-codec).
if [ "${1:-}" = bench ]; then
	DEB_PKGS="
nginx-light:cmd:nginx
libnginx-mod-stream:file:/usr/lib/nginx/modules/ngx_stream_module.so
wrk:cmd:wrk
iperf3:cmd:iperf3
gnuplot-nox:cmd:gnuplot
valgrind:cmd:valgrind
"
fi

# Fedora/RHEL equivalents, for the dnf path (best effort: same set, other names).
RPM_PKGS="pkgconf-pkg-config gcc clang make libuv-devel openssl-devel libconfig-devel
lmdb-devel criterion-devel http-parser-devel libjwt-devel jansson-devel systemd-devel
compiler-rt python3 python3-jwt curl nodejs npm golang clang-tools-extra
rpm-build rpmlint python3-pyyaml groff-base systemd"

missing=""
for entry in $DEB_PKGS; do
	pkg=${entry%%:*}; rest=${entry#*:}; kind=${rest%%:*}; what=${rest#*:}
	case $kind in
	pc) pkg-config --exists "$what" 2>/dev/null && continue ;;
	cmd) command -v "$what" >/dev/null 2>&1 && continue ;;
	file) [ -e "$what" ] && continue ;;
	esac
	missing="$missing $pkg"
done

[ -z "$missing" ] && exit 0

if command -v apt-get >/dev/null 2>&1; then
	cmd="apt-get install -y --no-install-recommends$missing"
	if [ "$(id -u)" != 0 ]; then
		echo "pikod: missing build dependencies; run as root:" >&2
		echo "  apt-get update && $cmd" >&2
		exit 1
	fi
	echo "deps: installing$missing"
	apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $cmd
elif command -v dnf >/dev/null 2>&1; then
	cmd="dnf install -y $RPM_PKGS"
	if [ "$(id -u)" != 0 ]; then
		echo "pikod: missing build dependencies; run as root:" >&2
		echo "  $cmd" >&2
		exit 1
	fi
	$cmd
else
	echo "pikod: no apt-get or dnf; install by hand:$missing" >&2
	exit 1
fi
