#!/usr/bin/env bash
# Install the Debian packages a target needs, only those missing. Usage: install-deps.sh test|bench|demo
# Needs root (CI and the dev machines are root); elsewhere it says what is missing and goes on:
# the tests that need a missing tool skip with a reason.
# etcd: Debian's etcd-server installs /usr/bin/etcd (3.4); the tests start their own on free ports.
set -uo pipefail
case "${1:-test}" in
  test)  want="curl:curl openssl:openssl h2load:nghttp2-client etcd:etcd-server" ;;
  bench) want="curl:curl haproxy:haproxy nginx:nginx wrk:wrk h2load:nghttp2-client taskset:util-linux" ;;
  demo)  want="" ;;
  *) echo "usage: $0 test|bench|demo" >&2; exit 2 ;;
esac
missing=""
for pair in $want; do
  cmd=${pair%%:*}; pkg=${pair#*:}
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-deps: not root or no apt-get; missing:$missing (tests needing them will skip)" >&2
  exit 0
fi
echo "install-deps: installing$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null 2>&1 \
  || echo "install-deps: apt-get failed for:$missing (tests needing them will skip)" >&2
# etcd-server's postinst enables etcd.service on the default ports (2379/2380) where systemd
# runs: nothing here needs it, so don't leave a freshly installed one running.
case " $missing " in
  *" etcd-server "*) command -v systemctl >/dev/null 2>&1 \
    && systemctl disable --now etcd.service >/dev/null 2>&1 || true ;;
esac
exit 0
