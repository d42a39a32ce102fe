#!/usr/bin/env bash
# README's first command: a local demo cluster on a fresh Debian machine with only a Rust
# toolchain. The stand-in RKE2 servers run a real etcd, so Debian's etcd-server is installed when
# etcd is missing (nothing else: nginx and HAProxy stay optional, the demo renders the LB config
# without them); then the workspace's binaries are built and the demo runs with the arguments
# given (`bash tests/demo.sh --json`, `--keep`, `--lb haproxy`; `--help` lists them).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  echo "installing: etcd-server" >&2
  # apt-get needs root; sudo when there is one to ask.
  as_root=()
  if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then as_root=(sudo); fi
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # Installing must not start the system-wide etcd: the demo starts its own instances.
  "${as_root[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d"
  "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends etcd-server >/dev/null
  "${as_root[@]}" rm -f /usr/sbin/policy-rc.d
fi
# Without apt-get (or if the install failed quietly) the demo itself stops at once, naming the
# package.

cargo build --workspace --bins
exec "${CARGO_TARGET_DIR:-target}/debug/rke2-demo" "$@"
