#!/bin/sh
# The RKE2 installer as the systemd end-to-end test serves it (in place of get.rke2.io), run by
# rke2-bootstrap inside a throw-away systemd-nspawn container. Like the real installer's tarball
# method it installs /usr/local/bin/rke2 and RKE2's two units under /usr/local/lib/systemd/system
# and enables or starts nothing. `rke2 server|agent` runs the RKE2 stand-in (rke2-standin),
# downloaded from the same place as this script, as the real installer downloads its tarball.
#
# The test replaces @BASE_URL@ with the URL this script is served from (without the file name).
# Every run appends its INSTALL_RKE2_* variables and a line `---` to /var/log/rke2-install.env,
# so the test can count installer runs (a reboot must not run it again).
set -eu

fatal() {
	printf '[ERROR] %s\n' "$*" >&2
	exit 1
}

base=@BASE_URL@
# Never on a real machine: this installs a stand-in as /usr/local/bin/rke2.
[ -e /run/systemd/container ] || fatal "this test installer runs only inside a container"

type=${INSTALL_RKE2_TYPE:-${INSTALL_RKE2_EXEC:-server}}
case $type in
server | agent) ;;
*) fatal "invalid INSTALL_RKE2_TYPE '$type': expected server or agent" ;;
esac
method=${INSTALL_RKE2_METHOD:-tar}
[ "$method" = tar ] || fatal "INSTALL_RKE2_METHOD '$method': this test installer has the tar method only"
prefix=${INSTALL_RKE2_TAR_PREFIX:-/usr/local}
version=${INSTALL_RKE2_VERSION:-v1.31.0+rke2r1}

mkdir -p /var/log
{
	env | grep '^INSTALL_RKE2_[A-Za-z0-9_]*=' | LC_ALL=C sort || true
	echo ---
} >>/var/log/rke2-install.env

printf '[INFO]  installing rke2 %s (%s) under %s\n' "$version" "$type" "$prefix"
mkdir -p "$prefix/bin" "$prefix/lib/systemd/system"
curl -fsSL --retry 5 -o "$prefix/bin/rke2-standin.tmp" "$base/rke2-standin"
chmod 0755 "$prefix/bin/rke2-standin.tmp"
mv -f "$prefix/bin/rke2-standin.tmp" "$prefix/bin/rke2-standin"

cat >"$prefix/bin/rke2.tmp" <<RKE2
#!/bin/sh
case \${1:-} in
server | agent) exec $prefix/bin/rke2-standin --root / --kind "\$1" --in-container ;;
--version | -v | version) echo 'rke2 version $version' ;;
*)
	echo "rke2 stand-in: only server, agent and --version" >&2
	exit 1
	;;
esac
RKE2
chmod 0755 "$prefix/bin/rke2.tmp"
mv -f "$prefix/bin/rke2.tmp" "$prefix/bin/rke2"

# RKE2's units (bundle/lib/systemd/system in rancher/rke2), with what matters here kept: notify,
# no start timeout, restart always, the other unit conflicting, and an ExecCondition that keeps
# one from starting while the other runs.
for unit in server agent; do
	other=agent
	[ "$unit" = server ] || other=server
	cat >"$prefix/lib/systemd/system/rke2-$unit.service.tmp" <<UNIT
[Unit]
Description=Rancher Kubernetes Engine v2 ($unit)
Documentation=https://github.com/rancher/rke2#readme
Wants=network-online.target
After=network-online.target
Conflicts=rke2-$other.service

[Install]
WantedBy=multi-user.target

[Service]
Type=notify
EnvironmentFile=-/etc/default/%N
EnvironmentFile=-/etc/sysconfig/%N
EnvironmentFile=-$prefix/lib/systemd/system/%N.env
KillMode=process
Delegate=yes
LimitNOFILE=1048576
LimitNPROC=infinity
LimitCORE=infinity
TasksMax=infinity
TimeoutStartSec=0
Restart=always
RestartSec=5s
ExecCondition=/bin/sh -c '! /usr/bin/systemctl is-active --quiet rke2-$other.service'
ExecStart=$prefix/bin/rke2 $unit
UNIT
	mv -f "$prefix/lib/systemd/system/rke2-$unit.service.tmp" "$prefix/lib/systemd/system/rke2-$unit.service"
done
printf '[INFO]  installed rke2 %s; start it with: systemctl enable --now rke2-%s.service\n' "$version" "$type"
