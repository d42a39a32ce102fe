#!/usr/bin/env bash
# The packages under a real systemd and a real cloud-init: seven systemd-nspawn containers booted
# from a Debian 12 root (tests/systemd/root.sh builds and caches it), systemd as PID 1 in each,
# sharing the host's network on loopback addresses 127.246.0.x.
#
#   tests/systemd/run.sh [--keep]
#
# - lb-1 (.10): the shipped cloud-init example lb-nginx.yaml: nginx and rke2-lb-sidecar, the LB the
#   nodes register through. lb-2 (.16): lb-haproxy.yaml, a second LB in front of the same servers.
# - s1, s2, s3 (.11-.13): server.yaml. a1 (.14): agent.yaml. Each from a NoCloud seed, run by
#   the container's own cloud-init; the package URL and the installer are served on 127.246.0.1.
# - p1 (.15): a PXE-style image: the package installed with dpkg -i and the key baked in, every
#   setting from the kernel command line (a file bound over /proc/cmdline) and a config fetched at
#   boot, pinned by its SHA-256.
# The examples are used as shipped apart from addresses, ports, URLs, the digest and the key.
#
# Then: one cluster forms (one initializer, RKE2's Type=notify stand-in units active, the LB lists
# the three servers); `systemctl status`, `journalctl -u rke2-bootstrap`; a broken key file that
# fails `systemctl reload`; a key rotation with `systemctl reload` everywhere; `systemctl stop` as a graceful leave that leaves RKE2 running; a
# reboot of the first server that resumes without installing or initializing again; a reboot of
# p1 while its config server is down (it starts from the config it kept at its first boot).
#
# Needs root, the packages (packaging/build-packages.sh --no-rpm) and the stand-in binary (built
# here if missing). Installs debootstrap and systemd-container when missing. --keep leaves the
# containers running after the checks, until Ctrl-C, and prints how to reach them.
set -euo pipefail

keep=0
case "${1:-}" in
--keep) keep=1 ;;
"") ;;
*)
	sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
	;;
esac

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}
started=$(date +%s)

net=127.246.0
www_addr=$net.1
www_port=18080
www=http://$www_addr:$www_port
lb_ip=$net.10
server_names=(s1 s2 s3)
declare -A ip=([lb-1]=$net.10 [s1]=$net.11 [s2]=$net.12 [s3]=$net.13 [a1]=$net.14 [p1]=$net.15 [lb-2]=$net.16)
names=(lb-1 s1 s2 s3 a1 p1 lb-2)
nodes=(s1 s2 s3 a1 p1)
gossip_port=7947

log() { printf '%s [%4ds] %s\n' "$(date +%H:%M:%S)" "$(($(date +%s) - started))" "$*" >&2; }
fail() {
	log "FAIL: $*"
	exit 1
}

[ "$(id -u)" = 0 ] || fail "needs root (systemd-nspawn, mounts)"

# --- tools ----------------------------------------------------------------------------------------
need=()
command -v systemd-nspawn >/dev/null || need+=(systemd-container)
command -v debootstrap >/dev/null || need+=(debootstrap)
command -v python3 >/dev/null || need+=(python3)
command -v curl >/dev/null || need+=(curl)
command -v ps >/dev/null || need+=(procps)
# The RKE2 stand-in's servers run a real etcd: the host's binary (static) is bound into each
# container rather than installed into the cached root.
command -v etcd >/dev/null || need+=(etcd-server)
if [ ${#need[@]} -gt 0 ]; then
	log "installing ${need[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# No system service may start on the host while installing.
	guard=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
		guard=1
	fi
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	if ((guard)); then rm -f /usr/sbin/policy-rc.d; fi
fi

shopt -s nullglob
debs=("$target"/packages/rke2-bootstrap_*_amd64.deb)
sidecar_debs=("$target"/packages/rke2-lb-sidecar_*_amd64.deb)
shopt -u nullglob
[ ${#debs[@]} -eq 1 ] || fail "expected one rke2-bootstrap .deb in $target/packages: run packaging/build-packages.sh --no-rpm"
[ ${#sidecar_debs[@]} -eq 1 ] ||
	fail "expected one rke2-lb-sidecar .deb in $target/packages: run packaging/build-packages.sh --no-rpm"
deb=${debs[0]}
sidecar_deb=${sidecar_debs[0]}
standin=$target/debug/rke2-standin
if [ ! -x "$standin" ]; then
	log "building rke2-standin"
	(cd "$repo" && cargo build --quiet -p rke2-bootstrap-tests --bin rke2-standin)
fi

log "root image"
image=$(bash "$here/root.sh")

# --- scratch, HTTP server, cleanup ------------------------------------------------------------------
work=$(mktemp -d -t rke2-systemd-test.XXXXXX)
declare -A loop_pid=()
http_pid=
cleanup() {
	local rc=$?
	if [ "$rc" != 0 ]; then
		for n in "${names[@]}"; do
			[ -n "${loop_pid[$n]:-}" ] || continue
			log "---- $n: journalctl -u rke2-bootstrap -u rke2-lb-sidecar (last 25 lines)"
			c_exec "$n" journalctl --no-pager -n 25 -u rke2-bootstrap -u rke2-lb-sidecar >&2 2>/dev/null || true
			for u in $(c_exec "$n" systemctl list-units --failed --plain --no-legend 2>/dev/null | cut -d' ' -f1); do
				log "---- $n: failed unit $u"
				c_exec "$n" journalctl --no-pager -n 40 -u "$u" >&2 2>/dev/null || true
			done
		done
		tail -n 40 "$work/http.log" >&2 || true
	fi
	for n in "${names[@]}"; do
		[ -n "${loop_pid[$n]:-}" ] || continue
		# No restart after this power-off.
		touch "$work/$n/stop"
		local pid
		if pid=$(nspawn_pid "$n"); then kill -TERM "$pid" 2>/dev/null || true; fi
	done
	for n in "${names[@]}"; do
		[ -n "${loop_pid[$n]:-}" ] || continue
		local deadline=$(($(date +%s) + 30))
		while kill -0 "${loop_pid[$n]}" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do
			sleep 0.2
		done
		if kill -0 "${loop_pid[$n]}" 2>/dev/null; then
			log "$n did not power off within 30 s: killing it"
			kill -KILL -- "-${loop_pid[$n]}" 2>/dev/null || true
		fi
		wait "${loop_pid[$n]}" 2>/dev/null || true
		umount "$work/$n/merged" 2>/dev/null || umount -l "$work/$n/merged" 2>/dev/null || true
		for cg in /sys/fs/cgroup/*/rke2-systemd-test-"$n" /sys/fs/cgroup/rke2-systemd-test-"$n"; do
			if [ -d "$cg" ]; then find "$cg" -depth -type d -exec rmdir {} + 2>/dev/null || true; fi
		done
	done
	if [ -n "$http_pid" ]; then kill "$http_pid" 2>/dev/null || true; fi
	rm -rf "$work"
	log "cleaned up"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$work/www"
gossip_key=$(head -c 32 /dev/urandom | base64)
cp "$deb" "$sidecar_deb" "$standin" "$work/www/"
sed "s#@BASE_URL@#$www#" "$here/install.sh" >"$work/www/install.sh"
deb_name=$(basename "$deb")
sidecar_deb_name=$(basename "$sidecar_deb")
python3 -m http.server "$www_port" --bind "$www_addr" --directory "$work/www" \
	>"$work/http.log" 2>&1 &
http_pid=$!

# --- containers -------------------------------------------------------------------------------------
# Runs a command inside container $1 (its mount, UTS, IPC, PID and cgroup namespaces and root).
c_exec() {
	local n=$1 pid
	shift
	pid=$(leader_pid "$n") || return 1
	nsenter --target "$pid" --mount --uts --ipc --pid --cgroup --root --wd \
		env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SYSTEMD_PAGER= "$@"
}

# The systemd-nspawn process of container $1 (the child of its restart loop).
nspawn_pid() {
	local pid
	pid=$(ps -o pid= --ppid "${loop_pid[$1]}" 2>/dev/null | head -n1 | tr -d ' ')
	[ -n "$pid" ] && echo "$pid"
}

# The container's PID 1 (systemd), as the host sees it.
leader_pid() {
	local ns pid
	ns=$(nspawn_pid "$1") || return 1
	pid=$(ps -o pid= --ppid "$ns" 2>/dev/null | head -n1 | tr -d ' ')
	[ -n "$pid" ] || return 1
	echo "$pid" >"$work/$1.pid"
	echo "$pid"
}

# Prepares container $1's root: an overlay over the cached image, so the image is never written
# and a reboot keeps what the container wrote.
prepare() {
	local n=$1 d=$work/$1
	mkdir -p "$d/upper" "$d/ovl" "$d/merged"
	mount -t overlay overlay -o "lowerdir=$image,upperdir=$d/upper,workdir=$d/ovl" "$d/merged"
	tr -d '-' </proc/sys/kernel/random/uuid >"$d/merged/etc/machine-id"
	# Site settings every image of this test carries (README: optional environment): the RKE2
	# installer is served on loopback over plain http.
	cat >"$d/merged/etc/default/rke2-bootstrap" <<-ENV
		RKE2_BOOTSTRAP_INSTALLER_URL=$www/install.sh
		RKE2_BOOTSTRAP_ALLOW_INSECURE_INSTALLER_URL=true
	ENV
}

# Writes container $1's NoCloud seed from the shipped example $2 (packaging/cloud-init/*.yaml),
# changing only addresses, ports, URLs, the package digest and the gossip key (and lb-2's
# node-name); fails when a placeholder it expects is missing or one it does not know is left. The
# LB's address is lb-1's, except in lb-2's own config.
seed_cloud_init() {
	local n=$1 example=$repo/packaging/cloud-init/$2 seed=$work/$1/merged/var/lib/cloud/seed/nocloud
	local lb=$lb_ip
	[ "$n" != lb-2 ] || lb=${ip[lb-2]}
	local deb_sum sidecar_sum
	deb_sum=$(sha256sum "$deb" | cut -d' ' -f1)
	sidecar_sum=$(sha256sum "$sidecar_deb" | cut -d' ' -f1)
	mkdir -p "$seed"
	grep -q 'REPLACE-WITH-THE-SHA256-OF-THE-PACKAGE' "$example" || fail "$2: no package digest placeholder"
	grep -q 'REPLACE-WITH-THE-OUTPUT-OF-rke2-bootstrap-keygen' "$example" || fail "$2: no key placeholder"
	local sum=$deb_sum
	case $2 in lb-*) sum=$sidecar_sum ;; esac
	sed -E \
		-e "s#0\.0\.0\.0:794[67]#${ip[$n]}:$gossip_port#g" \
		-e "s#10\.0\.0\.1([1-3]):794[67]#$net.1\1:$gossip_port#g" \
		-e "s#rke2\.example\.internal#$lb#g" \
		-e "s#10\.0\.0\.10\b#$lb#g" \
		-e "s#node-name: lb-1#node-name: $n#" \
		-e "s#https://downloads\.example\.com/rke2-bootstrap/rke2-bootstrap_[^ ]*_amd64\.deb#$www/$deb_name#" \
		-e "s#https://downloads\.example\.com/rke2-bootstrap/rke2-lb-sidecar_[^ ]*_amd64\.deb#$www/$sidecar_deb_name#" \
		-e "s#REPLACE-WITH-THE-SHA256-OF-THE-PACKAGE#$sum#" \
		-e "s#REPLACE-WITH-THE-OUTPUT-OF-rke2-bootstrap-keygen#$gossip_key#" \
		"$example" >"$seed/user-data"
	if grep -nE '10\.0\.0\.|example\.(com|internal)|REPLACE-WITH|:7946' "$seed/user-data" | grep -v '^[0-9]*: *#' >&2; then
		fail "$2: a placeholder above was not replaced (did the example change shape?)"
	fi
	printf 'instance-id: %s-1\nlocal-hostname: %s\n' "$n" "$n" >"$seed/meta-data"
}

# Boots container $1 in the background; a reboot (nspawn's exit code 133) boots it again, any
# other exit ends it. Extra systemd-nspawn arguments follow.
boot() {
	local n=$1 d=$work/$1
	shift
	set -- --bind-ro="$(command -v etcd):/usr/bin/etcd" "$@"
	# shellcheck disable=SC2016 # expanded by the inner shell
	setsid bash -c '
		n=$1
		d=$2
		shift 2
		while :; do
			# Its own cgroup in every hierarchy, so each container systemd owns a subtree.
			for h in /sys/fs/cgroup/*/ /sys/fs/cgroup/; do
				[ -e "$h/cgroup.procs" ] || continue
				mkdir -p "$h/rke2-systemd-test-$n" 2>/dev/null &&
					echo $$ >"$h/rke2-systemd-test-$n/cgroup.procs" 2>/dev/null || true
			done
			rc=0
			systemd-nspawn --quiet --boot --register=no --keep-unit --machine="$n" \
				--directory="$d/merged" "$@" || rc=$?
			echo "nspawn exited $rc" >>"$d/console.log"
			[ "$rc" = 133 ] && [ ! -e "$d/stop" ] || exit "$rc"
		done
	' boot "$n" "$d" "$@" </dev/null >>"$d/console.log" 2>&1 &
	loop_pid[$n]=$!
}

# Waits until container $1's systemd has finished booting (running or degraded).
wait_booted() {
	local n=$1 deadline=$(($(date +%s) + ${2:-300})) state=
	while [ "$(date +%s)" -lt "$deadline" ]; do
		kill -0 "${loop_pid[$n]}" 2>/dev/null || {
			tail -n 30 "$work/$n/console.log" >&2
			fail "$n: the container exited"
		}
		state=$(c_exec "$n" systemctl is-system-running 2>/dev/null) || true
		case $state in
		running) return 0 ;;
		degraded)
			log "$n: booted degraded; failed units:"
			c_exec "$n" systemctl --no-pager --failed >&2 || true
			return 1
			;;
		esac
		sleep 1
	done
	fail "$n: not booted within ${2:-300} s (state '$state')"
}

# The members JSON as container $1's agent sees it.
members_json() { c_exec "$1" rke2-bootstrap members --json; }

# Runs a Python check over container $1's members JSON (stdin of the snippet: the JSON; it prints
# a reason and exits 1 when the check does not hold yet).
check_members() {
	local n=$1 snippet=$2 json
	json=$(members_json "$n" 2>/dev/null) || {
		echo "members failed on $n"
		return 1
	}
	printf '%s' "$json" | python3 -c "import json, sys
m = {x['name']: x for x in json.load(sys.stdin)}
$snippet"
}

# Reboots container $1 and waits until its new boot is up: the restart loop boots it again
# (systemd-nspawn exits 133 on a reboot), so a new PID 1 appears.
reboot_container() {
	local n=$1 old_leader pid deadline
	old_leader=$(leader_pid "$n")
	c_exec "$n" systemctl reboot || fail "$n: systemctl reboot failed"
	log "$n: rebooting"
	deadline=$(($(date +%s) + 90))
	while :; do
		pid=$(leader_pid "$n" 2>/dev/null) || pid=
		[ -n "$pid" ] && [ "$pid" != "$old_leader" ] && break
		[ "$(date +%s)" -lt "$deadline" ] || fail "$n: no new boot within 90 s"
		sleep 0.2
	done
	wait_booted "$n" || fail "$n: degraded after the reboot"
}

# Polls check_members until it holds or $3 seconds have passed.
wait_members() {
	local n=$1 snippet=$2 timeout=$3 what=$4 deadline reason=
	deadline=$(($(date +%s) + timeout))
	while [ "$(date +%s)" -lt "$deadline" ]; do
		if reason=$(check_members "$n" "$snippet" 2>&1); then
			log "$what (seen from $n)"
			return 0
		fi
		sleep 1
	done
	fail "$what: not within ${timeout}s, seen from $n: $reason"
}

# --- boot ----------------------------------------------------------------------------------------------
log "booting ${names[*]} from $image"
for n in "${names[@]}"; do prepare "$n"; done
seed_cloud_init lb-1 lb-nginx.yaml
seed_cloud_init lb-2 lb-haproxy.yaml
for n in "${server_names[@]}"; do seed_cloud_init "$n" server.yaml; done
seed_cloud_init a1 agent.yaml

# p1: the image has the key (written at image build) and no cloud-init; the boot loader's command
# line carries the settings and a config fetched at boot.
p1_root=$work/p1/merged
install -d -m 0700 "$p1_root/etc/rke2-bootstrap"
printf '%s\n' "$gossip_key" >"$p1_root/etc/rke2-bootstrap/gossip.key"
chmod 0600 "$p1_root/etc/rke2-bootstrap/gossip.key"
touch "$p1_root/etc/cloud/cloud-init.disabled"
cat >"$work/www/prod.yaml" <<YAML
cluster-name: prod
bootstrap-expect: 3
registration-address: $lb_ip
registration-ip: $lb_ip
YAML
prod_sum=$(sha256sum "$work/www/prod.yaml" | cut -d' ' -f1)
# The kernel command line: the container's is the host kernel's. The line lives in the image where
# kernel-install keeps a kernel's command line, and is bound over /proc/cmdline (systemd-nspawn
# binds over /proc only from inside the container's root). Services with ProtectControlGroups=
# get a fresh /proc from systemd, the kernel's own, so the agent's unit reads the file through
# `--kernel-cmdline` in a drop-in: the same parser and layering as /proc/cmdline.
mkdir -p "$p1_root/etc/kernel" "$p1_root/etc/systemd/system/rke2-bootstrap.service.d"
cat >"$p1_root/etc/systemd/system/rke2-bootstrap.service.d/kernel-cmdline.conf" <<'UNIT'
[Service]
ExecStart=
ExecStart=/usr/bin/rke2-bootstrap agent --config /etc/rke2-bootstrap/config.yaml --kernel-cmdline /etc/kernel/cmdline
UNIT
# The name DHCP would give it.
echo p1 >"$p1_root/etc/hostname"
printf '%s\n' "BOOT_IMAGE=/vmlinuz ro quiet rke2_bootstrap.role=agent rke2_bootstrap.bind-addr=${ip[p1]}:$gossip_port rke2_bootstrap.seeds=$net.11:$gossip_port,$net.12:$gossip_port,$net.13:$gossip_port rke2_bootstrap.config=$www/prod.yaml rke2_bootstrap.config_sha256=$prod_sum rke2_bootstrap.allow_insecure_config_url=1" \
	>"$p1_root/etc/kernel/cmdline"

for n in lb-1 s1 s2 s3 a1 lb-2; do boot "$n"; done
boot p1 --bind-ro=/etc/kernel/cmdline:/proc/cmdline

degraded=0
for n in "${names[@]}"; do wait_booted "$n" || degraded=1; done
((degraded == 0)) || fail "a container booted degraded"
log "all containers booted (systemd running, cloud-init done)"
for n in lb-1 lb-2 s1 s2 s3 a1; do
	ci=$(c_exec "$n" cloud-init status --long 2>&1) || fail "$n: cloud-init status: $ci"
	grep -q 'status: done' <<<"$ci" || fail "$n: cloud-init is not done: $ci"
	# Warnings are reported, not failed on. The image has no SSH server, so cloud-init's SSH
	# modules warn on every host; those are left out.
	c_exec "$n" grep -h '\[WARNING\]' /var/log/cloud-init.log | grep -vi ssh | sed "s/^/$n: cloud-init: /" >&2 || true
done

c_exec p1 grep -q rke2_bootstrap.role=agent /proc/cmdline || fail "p1 does not see its kernel command line"
cp "$deb" "$p1_root/var/cache/"
c_exec p1 dpkg -i "/var/cache/$deb_name" >"$work/p1-dpkg.log" 2>&1 || {
	cat "$work/p1-dpkg.log" >&2
	fail "p1: dpkg -i failed"
}
log "p1: package installed with dpkg -i"

# --- formation ---------------------------------------------------------------------------------------------
wait_members s1 "
want = ['s1', 's2', 's3', 'a1', 'p1']
missing = [n for n in want if n not in m or not m[n]['ready']]
if missing: print('not ready:', missing); sys.exit(1)
inits = [n for n in m if m[n]['initializer']]
if len(inits) != 1: print('initializers:', inits); sys.exit(1)
" 300 "one cluster: s1 s2 s3 a1 p1 ready, one initializer"
first=$(members_json s1 | python3 -c "import json,sys; print([x['name'] for x in json.load(sys.stdin) if x['initializer']][0])")
log "first server: $first"
for n in "${server_names[@]}"; do
	c_exec "$n" systemctl is-active --quiet rke2-server.service || fail "$n: rke2-server.service not active"
	c_exec "$n" systemctl is-active --quiet rke2-agent.service && fail "$n: rke2-agent.service active on a server"
done
for n in a1 p1; do
	c_exec "$n" systemctl is-active --quiet rke2-agent.service || fail "$n: rke2-agent.service not active"
done
for n in "${nodes[@]}"; do
	count=$(c_exec "$n" grep -c -- '^---$' /var/log/rke2-install.env) || count=0
	[ "$count" = 1 ] || fail "$n: the installer ran $count times"
done
log "rke2-server active on the servers, rke2-agent on a1 and p1 (Type=notify stand-ins), one installer run each"

# The LB lists the three servers.
deadline=$(($(date +%s) + 60))
while :; do
	conf=$(c_exec lb-1 cat /etc/nginx/rke2-stream.d/rke2.conf 2>/dev/null) || conf=
	ok=1
	for n in "${server_names[@]}"; do grep -q "${ip[$n]}:9345" <<<"$conf" || ok=0; done
	((ok)) && break
	[ "$(date +%s)" -lt "$deadline" ] || fail "lb-1: the nginx config does not list the three servers: $conf"
	sleep 1
done
c_exec lb-1 systemctl is-active --quiet nginx.service || fail "lb-1: nginx not active"
c_exec lb-1 test -e /etc/nginx/sites-enabled/default && fail "lb-1: nginx's default site is still enabled"
c_exec lb-1 systemctl is-active --quiet rke2-lb-sidecar.service || fail "lb-1: sidecar not active"
grep -q pong <<<"$(curl -sk --max-time 5 "https://$lb_ip:9345/ping")" || fail "lb-1: the supervisor port does not answer /ping through nginx"
log "lb-1: nginx lists the three servers and answers /ping through them"
deadline=$(($(date +%s) + 60))
while :; do
	conf=$(c_exec lb-2 cat /etc/haproxy/rke2.d/rke2.cfg 2>/dev/null) || conf=
	ok=1
	for n in "${server_names[@]}"; do grep -q "${ip[$n]}:9345" <<<"$conf" || ok=0; done
	((ok)) && break
	[ "$(date +%s)" -lt "$deadline" ] || fail "lb-2: the HAProxy config does not list the three servers: $conf"
	sleep 1
done
c_exec lb-2 systemctl is-active --quiet haproxy.service || fail "lb-2: haproxy not active"
c_exec lb-2 systemctl is-active --quiet rke2-lb-sidecar.service || fail "lb-2: sidecar not active"
grep -q pong <<<"$(curl -sk --max-time 5 "https://${ip[lb-2]}:9345/ping")" || fail "lb-2: the supervisor port does not answer /ping through HAProxy"
log "lb-2: HAProxy lists the three servers and answers /ping through them"

all_up="
want = ['s1', 's2', 's3', 'a1', 'p1', 'lb-1', 'lb-2']
down = [n for n in want if n not in m or not m[n]['alive']]
if down: print('not alive:', down); sys.exit(1)
"

# --- systemctl status, journalctl -------------------------------------------------------------------------
status=$(c_exec s2 systemctl status --no-pager rke2-bootstrap.service) || fail "s2: systemctl status exited non-zero: $status"
grep -q 'Active: active (running)' <<<"$status" || fail "s2: status is not active (running): $status"
# What the agent last said it does or waits for (sd_notify STATUS=), on the page operators read first.
grep -q 'Status: "ready: ' <<<"$status" || fail "s2: status does not show the agent's phase: $status"
journal=$(c_exec s2 journalctl --no-pager -u rke2-bootstrap.service)
grep -q 'Started rke2-bootstrap.service\|Started RKE2 zero-touch bootstrap agent' <<<"$journal" ||
	fail "s2: the journal does not show the start: $journal"
# Warnings at the journal's warning priority: the unpinned installer is one.
warnings=$(c_exec s2 journalctl --no-pager -p warning -u rke2-bootstrap.service)
grep -q 'installer checksum not pinned' <<<"$warnings" ||
	fail "s2: journalctl -p warning does not show the agent's warnings: $warnings"
# The error line a failed start prints is at error priority: a bad config in a transient unit.
c_exec s2 systemd-run --quiet --wait --unit=rke2-bootstrap-bad-config \
	rke2-bootstrap check-config --config /nonexistent.yaml && fail "s2: check-config accepted a missing file"
errors=$(c_exec s2 journalctl --no-pager -p err -u rke2-bootstrap-bad-config.service)
grep -q 'rke2-bootstrap: configuration error: .*/nonexistent.yaml' <<<"$errors" ||
	fail "s2: journalctl -p err does not show the configuration error: $errors"
log "systemctl status and journalctl -u rke2-bootstrap on s2: active (running), $(wc -l <<<"$journal") journal lines, warnings and errors at their priority"

# cloud-init's write_files created /etc/rke2-bootstrap before the package existed; the postinst
# must have closed it.
modes=$(c_exec s3 stat -c '%a %U %n' /etc/rke2-bootstrap /etc/rke2-bootstrap/config.yaml /etc/rke2-bootstrap/gossip.key)
[ "$modes" = "700 root /etc/rke2-bootstrap
600 root /etc/rke2-bootstrap/config.yaml
600 root /etc/rke2-bootstrap/gossip.key" ] || fail "s3: modes after cloud-init and the package: $modes"

# A crash: systemd restarts the agent (Restart=on-failure, RestartSec=10s) and it resumes.
c_exec s3 systemctl kill --signal=KILL rke2-bootstrap.service
deadline=$(($(date +%s) + 40))
until [ "$(c_exec s3 systemctl show -p NRestarts --value rke2-bootstrap.service)" = 1 ] &&
	c_exec s3 systemctl is-active --quiet rke2-bootstrap.service; do
	[ "$(date +%s)" -lt "$deadline" ] || fail "s3: the agent was not restarted after SIGKILL"
	sleep 0.5
done
wait_members s3 "$all_up" 30 "s3: restarted by systemd after SIGKILL, every node alive"

# --- key rotation ------------------------------------------------------------------------------------------
new_key=$(head -c 32 /dev/urandom | base64)
rotate() {
	local what=$1 keys=$2 n unit
	for n in "${names[@]}"; do
		unit=rke2-bootstrap.service
		case $n in lb-*) unit=rke2-lb-sidecar.service ;; esac
		printf '%s\n' "$keys" | c_exec "$n" sh -c 'umask 077; cat >/etc/rke2-bootstrap/gossip.key.new && mv /etc/rke2-bootstrap/gossip.key.new /etc/rke2-bootstrap/gossip.key'
		c_exec "$n" systemctl reload "$unit" || fail "$n: systemctl reload $unit failed"
	done
	wait_members a1 "$all_up" 60 "key rotation, $what: every node alive"
}
# A key file broken by a bad edit: `systemctl reload` fails, saying why, and the keys in use stay.
for n in s2 lb-2; do
	unit=rke2-bootstrap.service
	case $n in lb-*) unit=rke2-lb-sidecar.service ;; esac
	c_exec "$n" cp -p /etc/rke2-bootstrap/gossip.key /etc/rke2-bootstrap/gossip.key.good
	c_exec "$n" sh -c 'umask 077; echo "not a key" >/etc/rke2-bootstrap/gossip.key'
	if c_exec "$n" systemctl reload "$unit" 2>/dev/null; then
		fail "$n: systemctl reload $unit accepted a broken key file"
	fi
	reason=$(c_exec "$n" journalctl --no-pager -u "$unit" -n 20)
	grep -q 'did not load' <<<"$reason" || fail "$n: the failed reload does not say why: $reason"
	c_exec "$n" mv /etc/rke2-bootstrap/gossip.key.good /etc/rke2-bootstrap/gossip.key
	c_exec "$n" systemctl is-active --quiet "$unit" || fail "$n: a failed reload stopped $unit"
done
log "a broken key file fails systemctl reload on s2 and lb-2, saying why; both keep running"
rotate "new key added" "$gossip_key
$new_key"
rotate "new key primary" "$new_key
$gossip_key"
rotate "old key removed" "$new_key"
# Alive must mean heard from after the old key went: wait longer than a failure detection and
# check again.
sleep 15
check_members s1 "$all_up" || fail "after the rotation, not every node stays alive"
journal=$(c_exec s1 journalctl --no-pager -u rke2-bootstrap.service)
if [ "$(grep -c 'gossip keyring reloaded primary=' <<<"$journal")" != 3 ] ||
	! grep -q 'gossip keyring reloaded.* keys=1' <<<"$journal"; then
	fail "s1: the journal does not show three keyring reloads ending with one key"
fi
log "key rotation with systemctl reload: done, every node alive on the new key alone"

# --- graceful leave ----------------------------------------------------------------------------------------
c_exec a1 systemctl stop rke2-bootstrap.service || fail "a1: systemctl stop failed"
result=$(c_exec a1 systemctl show -p Result --value rke2-bootstrap.service)
[ "$result" = success ] || fail "a1: stopped with result '$result'"
c_exec a1 systemctl is-active --quiet rke2-agent.service || fail "a1: stopping the agent stopped RKE2"
wait_members s1 "
if m['a1']['alive'] or not m['a1']['left']: print('a1:', m['a1']); sys.exit(1)
" 20 "a1 stopped: seen as left, rke2-agent still running on it"

# --- reboot of the first server ----------------------------------------------------------------------------
ca_before=$(c_exec "$first" sha256sum /var/lib/rancher/rke2/server/tls/server-ca.crt | cut -d' ' -f1)
package_downloads=$(grep -c "GET /$deb_name" "$work/http.log")
reboot_container "$first"
wait_members "$first" "
want = ['s1', 's2', 's3', 'p1']
missing = [n for n in want if n not in m or not m[n]['ready']]
if missing: print('not ready:', missing); sys.exit(1)
" 120 "$first rebooted: servers and p1 ready again"
count=$(c_exec "$first" grep -c -- '^---$' /var/log/rke2-install.env)
[ "$count" = 1 ] || fail "$first: the installer ran again after the reboot ($count runs)"
ca_after=$(c_exec "$first" sha256sum /var/lib/rancher/rke2/server/tls/server-ca.crt | cut -d' ' -f1)
[ "$ca_before" = "$ca_after" ] || fail "$first: the cluster CA changed across the reboot"
boots=$(c_exec "$first" journalctl --no-pager --list-boots | grep -c .)
[ "$boots" -ge 2 ] || fail "$first: the journal shows $boots boot(s)"
c_exec "$first" systemctl is-active --quiet rke2-server.service || fail "$first: rke2-server not active after the reboot"
journal=$(c_exec "$first" journalctl --no-pager -b 0 -u rke2-bootstrap.service)
grep -q 'this host already joined a cluster; resuming' <<<"$journal" ||
	fail "$first: the agent did not resume after the reboot: $journal"
if grep -E 'elected to initialize|generated a cluster token|running installer' <<<"$journal" >&2; then
	fail "$first: the agent initialized or installed again after the reboot"
fi
# cloud-init's per-instance modules (write_files, runcmd with the package download) ran once.
ci=$(c_exec "$first" cloud-init status --long 2>&1) || fail "$first: cloud-init status after the reboot: $ci"
[ "$(grep -c "GET /$deb_name" "$work/http.log")" = "$package_downloads" ] ||
	fail "$first: cloud-init downloaded the package again after the reboot"
log "$first: resumed after the reboot without installing or initializing again (CA unchanged)"

# --- reboot of the PXE host while its config server is down ------------------------------------------
# The boot entry still names prod.yaml, which the server no longer has: the agent must start from the
# copy it kept in its state directory (same pinned digest), without asking the server.
mv "$work/www/prod.yaml" "$work/prod.yaml.away"
reboot_container p1
wait_members p1 "
if not m.get('p1', {}).get('ready'): print('p1:', m.get('p1')); sys.exit(1)
" 120 "p1 rebooted while its config server is down: ready again"
journal=$(c_exec p1 journalctl --no-pager -b 0 -u rke2-bootstrap.service)
grep -q 'boot config: the kept copy has the pinned digest' <<<"$journal" ||
	fail "p1: the agent did not start from its kept boot config: $journal"
mv "$work/prod.yaml.away" "$work/www/prod.yaml"
log "p1: rebooted while its config server was down, started from the kept boot config"

log "PASS: systemd end-to-end test in $(($(date +%s) - started)) s"
if ((keep)); then
	for n in "${names[@]}"; do leader_pid "$n" >/dev/null || true; done
	log "kept running until Ctrl-C; a shell in a container: nsenter -t \$(cat $work/<name>.pid) -a -r -w bash"
	while :; do sleep 1; done
fi
