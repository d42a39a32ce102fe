#!/usr/bin/env bash
# Checks the packaging: the systemd units, the cloud-init examples, the default configs, the
# maintainer scripts, and (when they have been built) the .deb and .rpm packages.
#
#   packaging/check.sh [--require-deb] [--package-dir DIR]
#
# One line per check (PASS/FAIL/SKIP), then a count; exits non-zero if any check failed. Installs
# the Debian packages it needs when they are missing (as root). Without built packages it takes a
# few seconds; packages are looked for in DIR (default: <target dir>/packages, where
# build-packages.sh puts them) and are then required with --require-deb.
set -euo pipefail

usage() {
	sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
}

require_deb=0
package_dir=""
while (($#)); do
	case "$1" in
	--require-deb) require_deb=1 ;;
	--package-dir)
		package_dir=${2:?--package-dir needs a directory}
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		usage >&2
		exit 2
		;;
	esac
	shift
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
package_dir=${package_dir:-${CARGO_TARGET_DIR:-$repo/target}/packages}
# Debian's interpreter: it has the yaml module and cloud-init's own modules.
py=/usr/bin/python3

passed=0
failed=0
skipped=0
pass() {
	printf 'PASS  %s\n' "$1"
	passed=$((passed + 1))
}
fail() {
	printf 'FAIL  %s: %s\n' "$1" "$2"
	failed=$((failed + 1))
}
skip() {
	printf 'SKIP  %s: %s\n' "$1" "$2"
	skipped=$((skipped + 1))
}
# check NAME COMMAND...: PASS when COMMAND succeeds, else FAIL with its output on one line.
check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then
		pass "$name"
	else
		fail "$name" "$(printf '%s' "$out" | tr '\n' ' ' | cut -c1-400)"
	fi
}

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# --- Dependencies -------------------------------------------------------------------------------
ensure_deps() {
	local missing=()
	command -v systemd-analyze >/dev/null || missing+=(systemd)
	command -v cloud-init >/dev/null || missing+=(cloud-init)
	command -v dpkg-deb >/dev/null || missing+=(dpkg)
	command -v shellcheck >/dev/null || missing+=(shellcheck)
	[ -x "$py" ] && "$py" -c 'import yaml' 2>/dev/null || missing+=(python3-yaml)
	((${#missing[@]})) || return 0
	if [ "$(id -u)" -ne 0 ]; then
		echo "check.sh: missing ${missing[*]}; run as root to install them" >&2
		exit 2
	fi
	echo "check.sh: installing ${missing[*]}" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}
ensure_deps

# The host's unit directory: the targets our units refer to (network-online.target, ...).
host_units=/usr/lib/systemd/system
[ -d "$host_units" ] || host_units=/lib/systemd/system

# A scratch root holding the host's units, for `systemd-analyze verify --root`.
new_root() {
	local root=$1
	mkdir -p "$root/lib/systemd" "$root/etc/systemd/system" "$root/usr/bin" "$root/bin"
	cp -a "$host_units" "$root/lib/systemd/"
}

# exec_paths FILE...: the absolute programs of the Exec*= lines.
exec_paths() {
	sed -n 's/^Exec[A-Za-z]*=[-+!@:]*\(\/[^ ]*\).*/\1/p' "$@" | sort -u
}

# verify_in ROOT UNIT: systemd-analyze verify must succeed and print nothing (unknown keys are
# only warnings, with exit status 0, and must fail the check too).
verify_in() {
	local out
	out=$(systemd-analyze verify --root="$1" "$2" 2>&1) || {
		echo "$out"
		return 1
	}
	[ -z "$out" ] || {
		echo "$out"
		return 1
	}
}

# --- systemd units ------------------------------------------------------------------------------
# verify runs against a scratch root instead of the host: it checks that every Exec*= program
# exists and is executable, so the root gets a stub for each (a shell script doing nothing: the
# check is about the unit, not the binary; the installed-package check below verifies the units
# again against the real, packaged binaries). The host's own /usr/bin stays untouched.
units_dir=$here/systemd
unit_root=$scratch/unit-root
new_root "$unit_root"
cp "$units_dir"/*.service "$unit_root/etc/systemd/system/"
while read -r prog; do
	mkdir -p "$unit_root$(dirname "$prog")"
	printf '#!/bin/sh\nexit 0\n' >"$unit_root$prog"
	chmod 755 "$unit_root$prog"
done < <(exec_paths "$units_dir"/*.service "$units_dir"/*.conf.example)
for unit in rke2-bootstrap.service rke2-lb-sidecar.service; do
	check "systemd-analyze verify $unit" verify_in "$unit_root" "$unit"
done
# The optional strict drop-in, applied on top of the agent unit.
strict_root=$scratch/strict-root
cp -a "$unit_root" "$strict_root"
mkdir -p "$strict_root/etc/systemd/system/rke2-bootstrap.service.d"
cp "$units_dir/rke2-bootstrap-strict.conf.example" \
	"$strict_root/etc/systemd/system/rke2-bootstrap.service.d/strict.conf"
check "systemd-analyze verify rke2-bootstrap.service + strict drop-in" \
	verify_in "$strict_root" rke2-bootstrap.service

# unit_policy UNIT: the decisions documented in the units, kept from regressing.
unit_policy() {
	local f=$units_dir/$1 problems=()
	grep -qx 'Type=notify' "$f" || problems+=("not Type=notify")
	grep -qx 'Restart=on-failure' "$f" || problems+=("not Restart=on-failure")
	grep -q '^RestartSec=' "$f" || problems+=("no RestartSec")
	grep -qx 'StartLimitIntervalSec=0' "$f" || problems+=("may give up restarting")
	grep -q '^Wants=network-online.target' "$f" || problems+=("no Wants=network-online.target")
	grep -q '^After=network-online.target' "$f" || problems+=("no After=network-online.target")
	grep -q '^ExecStart=/usr/bin/[a-z0-9-]* .*--config /etc/rke2-bootstrap/' "$f" ||
		problems+=("ExecStart does not name a config under /etc/rke2-bootstrap")
	grep -q '^ConditionPathExists=/etc/rke2-bootstrap/gossip.key' "$f" ||
		problems+=("no condition on the gossip key")
	# Ordering against RKE2's units would deadlock or delay the agent (see the unit's comments);
	# a condition on the joined marker would stop the agent after the first bring-up.
	grep -Eq '^(Before|After|Requires|Wants|BindsTo|PartOf)=.*rke2-(server|agent)' "$f" &&
		problems+=("ordered against RKE2's units")
	grep -Eq '^(Condition|Assert|ExecCondition).*joined' "$f" && problems+=("skipped once joined")
	grep -Eq '^(RestartSteps|RestartMaxDelaySec)=' "$f" &&
		problems+=("uses keys that Debian 12's systemd rejects")
	if [ "$1" = rke2-lb-sidecar.service ]; then
		grep -q '^After=nginx.service haproxy.service' "$f" || problems+=("not after the LBs")
		grep -Eq '^(Wants|Requires)=.*(nginx|haproxy)' "$f" && problems+=("pulls in an LB")
	fi
	((${#problems[@]} == 0)) || {
		printf '%s; ' "${problems[@]}"
		return 1
	}
}
for unit in rke2-bootstrap.service rke2-lb-sidecar.service; do
	check "unit policy $unit" unit_policy "$unit"
done

# --- cloud-init examples and default configs ----------------------------------------------------
# Configs are validated by the binaries themselves (`check-config`), so the key tables and value
# rules live in one place: the code that loads them at boot.
built_bin() {
	local dir
	for dir in "${CARGO_TARGET_DIR:-$repo/target}"/debug "${CARGO_TARGET_DIR:-$repo/target}"/release; do
		[ -x "$dir/$1" ] && {
			echo "$dir/$1"
			return
		}
	done
	command -v "$1" || true
}
agent_bin=$(built_bin rke2-bootstrap)
sidecar_bin=$(built_bin rke2-lb-sidecar)

# config_check FILE agent|sidecar: FILE loads as that binary's configuration. The environment is
# emptied (an RKE2_BOOTSTRAP_* variable of this shell must not decide) and no kernel command line
# is read.
config_check() {
	local file=$1 cmd
	case $2 in
	agent) cmd=("$agent_bin" check-config --kernel-cmdline /dev/null) ;;
	sidecar) cmd=("$sidecar_bin" --check-config) ;;
	esac
	[ -n "${cmd[0]}" ] || {
		echo "the $2 binary is not built (cargo build --workspace --bins)"
		return 1
	}
	env -i "${cmd[@]}" --config "$file" >/dev/null
}

# content_check FILE EMBEDDED: what the schema does not check. Unknown top-level keys (the schema
# lets `write_file:` through), the files written under /etc/rke2-bootstrap (root-owned, 0600), a
# placeholder rather than a real key, and the install step (pinned, keeping the written config)
# and service enablement. The embedded config is written to EMBEDDED for its binary to check.
content_check() {
	"$py" - "$1" "$2" <<'PY'
import os, re, sys, yaml
from cloudinit.config.schema import get_schema

path = sys.argv[1]
doc = yaml.safe_load(open(path))
schema = get_schema()
known = set()
for ref in schema["allOf"]:
    known |= set(schema["$defs"][ref["$ref"].rsplit("/", 1)[1]].get("properties", {}))
problems = [f"unknown top-level key {k!r}" for k in doc if k not in known]

files = {f["path"]: f for f in doc.get("write_files", [])}
is_lb = os.path.basename(path).startswith("lb-")
config = "/etc/rke2-bootstrap/lb-sidecar.yaml" if is_lb else "/etc/rke2-bootstrap/config.yaml"
service = "rke2-lb-sidecar.service" if is_lb else "rke2-bootstrap.service"
for p in (config, "/etc/rke2-bootstrap/gossip.key"):
    f = files.get(p)
    if f is None:
        problems.append(f"does not write {p}")
        continue
    if f.get("permissions") != "0600" or f.get("owner") != "root:root":
        problems.append(f"{p} is not root:root 0600")
    if f.get("defer"):
        problems.append(f"{p} is deferred: it must exist before the service starts")
if config in files:
    with open(sys.argv[2], "w") as out:
        out.write(files[config]["content"])
key = files.get("/etc/rke2-bootstrap/gossip.key", {}).get("content", "")
key_lines = [l for l in key.splitlines() if l.strip() and not l.startswith("#")]
if key_lines != ["REPLACE-WITH-THE-OUTPUT-OF-rke2-bootstrap-keygen"]:
    problems.append("the gossip key is not the placeholder")
runcmd = "\n".join(c if isinstance(c, str) else " ".join(c) for c in doc.get("runcmd", []))
if "sha256sum -c" not in runcmd or "--force-confold" not in runcmd:
    problems.append("the package install is not pinned or would not keep the written config")
if not re.search(rf"systemctl enable --now {re.escape(service)}", runcmd):
    problems.append(f"does not enable {service}")
if problems:
    print("; ".join(problems))
    sys.exit(1)
PY
}

for example in "$here"/cloud-init/*.yaml; do
	name=$(basename "$example")
	kind=agent
	[[ $name == lb-* ]] && kind=sidecar
	check "cloud-init schema $name" cloud-init schema --config-file "$example"
	check "cloud-init content $name" content_check "$example" "$scratch/$name.config"
	check "cloud-init embedded config $name" config_check "$scratch/$name.config" "$kind"
done
# The packaged agent config names no seeds (every site has its own), so as shipped it has no
# electorate and is refused; a host adds its seeds, and then it must load.
{
	cat "$here/config/config.yaml"
	echo 'seeds: [10.0.0.11:7947]'
} >"$scratch/config-with-seeds.yaml"
check "default config config.yaml (with a site's seeds)" config_check "$scratch/config-with-seeds.yaml" agent
check "default config lb-sidecar.yaml" config_check "$here/config/lb-sidecar.yaml" sidecar

# --- Scripts ------------------------------------------------------------------------------------
check "shellcheck build and check scripts" shellcheck "$here"/*.sh
check "shellcheck deb maintainer scripts" shellcheck -s sh "$here"/deb/scripts/*
check "shellcheck rpm scriptlets" shellcheck -s sh "$here"/rpm/*.sh

# --- Debian packages ----------------------------------------------------------------------------
# mode_of PATH: octal permission bits.
mode_of() { stat -c '%a' "$1"; }

# deb_contents DEB PKG CONFIG: paths and modes inside the archive, and the conffile.
deb_contents() {
	local deb=$1 pkg=$2 config=$3 listing problems=()
	listing=$(dpkg-deb -c "$deb")
	expect_entry() {
		grep -Eq "^$1 [^ ]+ +[0-9]+ [0-9-]+ [0-9:]+ \\./$2\$" <<<"$listing" ||
			problems+=("no $2 with mode $1")
	}
	expect_entry '-rwxr-xr-x' "usr/bin/$pkg"
	expect_entry '-rw-r--r--' "lib/systemd/system/$pkg.service"
	expect_entry '-rw-------' "etc/rke2-bootstrap/$config"
	dpkg-deb -I "$deb" conffiles | grep -qx "/etc/rke2-bootstrap/$config" ||
		problems+=("/etc/rke2-bootstrap/$config is not a conffile")
	# The gossip key is never shipped: each cluster makes its own.
	grep -q 'gossip.key' <<<"$listing" && problems+=("ships a gossip key")
	((${#problems[@]} == 0)) || {
		printf '%s; ' "${problems[@]}"
		return 1
	}
}

# scratch_dpkg ROOT ARGS...: dpkg on a scratch root. Maintainer scripts run without chroot (the
# root has no shell); ours honour DPKG_ROOT, which dpkg sets, and touch nothing outside it.
scratch_dpkg() {
	local root=$1
	shift
	mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/var/lib/dpkg/triggers"
	touch "$root/var/lib/dpkg/status"
	dpkg --root="$root" --force-script-chrootless --force-depends --force-bad-path "$@"
}

# deb_install DEB PKG CONFIG: install into a fresh scratch root and check every path the unit
# expects, the modes, the enablement, the post-install hint, and the unit against the real binary.
deb_install() {
	local deb=$1 pkg=$2 config=$3 root=$scratch/install-$2 out problems=() unit
	new_root "$root"
	out=$(scratch_dpkg "$root" -i "$deb" 2>&1) || {
		echo "$out"
		return 1
	}
	unit=$root/lib/systemd/system/$pkg.service
	[ -f "$unit" ] || problems+=("unit not installed")
	[ -x "$root/usr/bin/$pkg" ] || problems+=("/usr/bin/$pkg not executable")
	[ "$(mode_of "$root/usr/bin/$pkg")" = 755 ] || problems+=("/usr/bin/$pkg not 0755")
	[ "$(mode_of "$root/etc/rke2-bootstrap")" = 700 ] || problems+=("/etc/rke2-bootstrap not 0700")
	[ "$(mode_of "$root/etc/rke2-bootstrap/$config")" = 600 ] || problems+=("$config not 0600")
	# Every absolute path the unit's ExecStart names must be in the package.
	while read -r p; do
		[ -e "$root$p" ] || problems+=("unit expects $p, not installed")
	done < <(sed -n 's/^ExecStart=//p' "$unit" | tr ' ' '\n' | grep '^/')
	[ -L "$root/etc/systemd/system/multi-user.target.wants/$pkg.service" ] ||
		problems+=("not enabled")
	if [ "$pkg" = rke2-bootstrap ]; then
		grep -qF 'rke2-bootstrap keygen > /etc/rke2-bootstrap/gossip.key' <<<"$out" &&
			grep -qF 'chmod 600 /etc/rke2-bootstrap/gossip.key' <<<"$out" ||
			problems+=("postinst does not explain keygen")
	else
		grep -qF '/etc/rke2-bootstrap/gossip.key' <<<"$out" ||
			problems+=("postinst does not explain the gossip key")
	fi
	# Programs the unit runs that come from the base system (e.g. /bin/kill for ExecReload) are
	# not in a scratch root: stub them, as above; the package's own binary stays the real one.
	while read -r prog; do
		[ -e "$root$prog" ] && continue
		mkdir -p "$root$(dirname "$prog")"
		printf '#!/bin/sh\nexit 0\n' >"$root$prog"
		chmod 755 "$root$prog"
	done < <(exec_paths "$unit")
	verify_in "$root" "$pkg.service" >/dev/null || problems+=("installed unit fails verify")
	# The binary runs on this host (same architecture, libraries present).
	"$root/usr/bin/$pkg" --help >/dev/null 2>&1 || problems+=("$pkg --help fails")
	((${#problems[@]} == 0)) || {
		printf '%s; ' "${problems[@]}"
		return 1
	}
}

# deb_cloud_init_flow DEB PKG CONFIG: as with cloud-init, the config and key exist before the
# package (directory 0755 as write_files leaves it); install with --force-confold keeps the
# written config and tightens the directory.
deb_cloud_init_flow() {
	local deb=$1 pkg=$2 config=$3 root=$scratch/flow-$2 out problems=()
	new_root "$root"
	mkdir -p "$root/etc/rke2-bootstrap"
	chmod 755 "$root/etc/rke2-bootstrap"
	(
		umask 077
		printf 'cluster-name: from-user-data\n' >"$root/etc/rke2-bootstrap/$config"
		printf 'placeholder\n' >"$root/etc/rke2-bootstrap/gossip.key"
	)
	out=$(scratch_dpkg "$root" --force-confold -i "$deb" 2>&1) || {
		echo "$out"
		return 1
	}
	[ "$(cat "$root/etc/rke2-bootstrap/$config")" = "cluster-name: from-user-data" ] ||
		problems+=("the written $config was replaced")
	[ "$(mode_of "$root/etc/rke2-bootstrap/$config")" = 600 ] || problems+=("$config not 0600")
	[ "$(mode_of "$root/etc/rke2-bootstrap")" = 700 ] || problems+=("/etc/rke2-bootstrap not 0700")
	grep -q 'no gossip key yet' <<<"$out" && problems+=("asks for a key that exists")
	((${#problems[@]} == 0)) || {
		printf '%s; ' "${problems[@]}"
		return 1
	}
}

# deb_purge PKG: remove and purge from the install root; the key and state stay.
deb_purge() {
	local pkg=$1 root=$scratch/install-$1 out problems=()
	printf 'placeholder\n' >"$root/etc/rke2-bootstrap/gossip.key"
	out=$(scratch_dpkg "$root" -P "$pkg" 2>&1) || {
		echo "$out"
		return 1
	}
	[ ! -e "$root/usr/bin/$pkg" ] || problems+=("binary left behind")
	[ ! -e "$root/lib/systemd/system/$pkg.service" ] || problems+=("unit left behind")
	[ ! -e "$root/etc/systemd/system/multi-user.target.wants/$pkg.service" ] ||
		problems+=("enablement left behind")
	[ -e "$root/etc/rke2-bootstrap/gossip.key" ] || problems+=("gossip key removed")
	((${#problems[@]} == 0)) || {
		printf '%s; ' "${problems[@]}"
		return 1
	}
}

shopt -s nullglob
for pkg in rke2-bootstrap rke2-lb-sidecar; do
	config=config.yaml
	[ "$pkg" = rke2-lb-sidecar ] && config=lb-sidecar.yaml
	debs=("$package_dir/${pkg}_"*.deb)
	if ((${#debs[@]} == 0)); then
		if ((require_deb)); then
			fail "deb $pkg" "no ${pkg}_*.deb in $package_dir"
		else
			skip "deb $pkg" "no ${pkg}_*.deb in $package_dir (build-packages.sh builds it)"
		fi
		continue
	fi
	deb=${debs[-1]}
	check "deb contents $(basename "$deb")" deb_contents "$deb" "$pkg" "$config"
	check "deb scratch install $pkg" deb_install "$deb" "$pkg" "$config"
	check "deb purge $pkg" deb_purge "$pkg"
	check "deb cloud-init flow $pkg" deb_cloud_init_flow "$deb" "$pkg" "$config"
done

# --- RPM packages -------------------------------------------------------------------------------
# rpm_contents RPM PKG CONFIG: modes, config flag and the scriptlets (a script path that did not
# resolve would be packaged as the path's text). The scriptlets themselves are not run here: rpm
# runs them chrooted into the target root, which would need a whole distribution inside.
rpm_contents() {
	local rpm=$1 pkg=$2 config=$3 listing scripts problems=()
	listing=$(rpm -qp --qf '[%{FILEMODES:perms} %{FILENAMES}\n]' "$rpm" 2>/dev/null)
	grep -qx -- "-rwxr-xr-x /usr/bin/$pkg" <<<"$listing" || problems+=("binary not 0755")
	grep -qx -- "-rw-r--r-- /usr/lib/systemd/system/$pkg.service" <<<"$listing" ||
		problems+=("unit missing")
	grep -qx -- "-rw------- /etc/rke2-bootstrap/$config" <<<"$listing" || problems+=("config not 0600")
	rpm -qp --configfiles "$rpm" 2>/dev/null | grep -qx "/etc/rke2-bootstrap/$config" ||
		problems+=("config not marked %config")
	scripts=$(rpm -qp --scripts "$rpm" 2>/dev/null)
	[ "$(grep -c "systemctl" <<<"$scripts")" -ge 3 ] || problems+=("scriptlets missing")
	# The packager cannot own a directory with a mode, so %post sets it.
	grep -Eq '^[[:space:]]*chmod 0700 /etc/rke2-bootstrap$' <<<"$scripts" ||
		problems+=("%post does not make /etc/rke2-bootstrap 0700")
	((${#problems[@]} == 0)) || {
		printf '%s; ' "${problems[@]}"
		return 1
	}
}

for pkg in rke2-bootstrap rke2-lb-sidecar; do
	config=config.yaml
	[ "$pkg" = rke2-lb-sidecar ] && config=lb-sidecar.yaml
	rpms=("$package_dir/${pkg}-"[0-9]*.rpm)
	if ((${#rpms[@]} == 0)); then
		skip "rpm $pkg" "no ${pkg}-*.rpm in $package_dir"
	elif ! command -v rpm >/dev/null; then
		skip "rpm $pkg" "the rpm tool is not installed"
	else
		check "rpm contents $(basename "${rpms[-1]}")" rpm_contents "${rpms[-1]}" "$pkg" "$config"
	fi
done

echo "checks: $passed passed, $failed failed, $skipped skipped"
((failed == 0))
