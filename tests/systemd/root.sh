#!/usr/bin/env bash
# Builds (once) the Debian root the systemd end-to-end test boots its containers from, and prints
# its path. Cached: a second run with the same package list returns at once.
#
#   tests/systemd/root.sh
#
# RKE2_SYSTEMD_TEST_CACHE: the cache directory (default /var/cache/rke2-bootstrap-systemd-test).
set -euo pipefail

cache=${RKE2_SYSTEMD_TEST_CACHE:-/var/cache/rke2-bootstrap-systemd-test}
suite=bookworm
# What a cloud image of Debian 12 has, plus the LB hosts' nginx and HAProxy: every package the
# shipped cloud-init examples install is already here, so cloud-init's `packages:` step finds
# nothing to download and the test never reaches a mirror once the root exists.
# python3-cffi-backend: debootstrap does not resolve virtual packages, and cloud-init needs the
# one it provides.
packages=systemd,systemd-sysv,dbus,cloud-init,python3-cffi-backend,curl,ca-certificates,iproute2,procps,nginx-light,libnginx-mod-stream,haproxy
# The cache key: a changed package list or suite builds a new root.
key=$(printf '%s %s v1\n' "$suite" "$packages" | sha256sum | cut -c1-12)
root=$cache/root-$key

if [ ! -e "$root/.complete" ]; then
	mkdir -p "$cache/debs"
	staging=$cache/staging-$key
	rm -rf "$staging"
	echo "== debootstrap $suite into $staging (a few minutes, once)" >&2
	debootstrap --variant=minbase --cache-dir="$cache/debs" --include="$packages" "$suite" "$staging" \
		>"$cache/debootstrap.log" 2>&1 || {
		tail -n 30 "$cache/debootstrap.log" >&2
		exit 1
	}
	touch "$staging/.complete"
	mv "$staging" "$root"
	# Roots of earlier package lists are not used again.
	find "$cache" -mindepth 1 -maxdepth 1 -name 'root-*' ! -name "root-$key" -exec rm -rf {} +
fi

# The settings below are applied on every run (they are cheap and idempotent), so changing them
# needs no new debootstrap.
# The containers share the host's network: nothing in the image may listen on a wildcard address
# of its own accord. nginx and HAProxy stay installed but disabled; the LB hosts' cloud-init
# enables and starts one of them (lb-nginx.yaml first removes nginx's default site, port 80 on
# every address). The sidecar's listeners bind the LB's own address.
chroot "$root" systemctl disable nginx.service haproxy.service >/dev/null 2>&1 || true
chroot "$root" systemctl mask systemd-networkd.service systemd-resolved.service \
	systemd-timesyncd.service >/dev/null 2>&1 || true
# cloud-init: the NoCloud seed directory only, and no network configuration (the host's network is
# shared and must not be touched).
cat >"$root/etc/cloud/cloud.cfg.d/90-rke2-systemd-test.cfg" <<'CFG'
datasource_list: [NoCloud, None]
network:
  config: disabled
# minbase has no locales package; the default (en_US.UTF-8) would fail cloud-config.service.
locale: C.UTF-8
CFG
# No mirror: apt-get update (cloud-init's package_update) succeeds with nothing to fetch.
rm -f "$root/etc/apt/sources.list"
: >"$root/etc/apt/sources.list"
# Each container is named by cloud-init (local-hostname) or by systemd-nspawn (--machine), not
# after the machine that built the image.
rm -f "$root/etc/hostname"
# A machine id per container (nspawn makes a transient one when it is empty), no root password.
: >"$root/etc/machine-id"
# Logs kept across a container's reboot, like a real disk.
mkdir -p "$root/var/log/journal"
echo "$root"
