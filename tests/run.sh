#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine: installs what the tests start for real
# (nginx with the stream module, HAProxy, etcd behind the RKE2 stand-in's servers, Serf for the
# benchmark smoke, cloud-init for the packaging checks), builds every binary once, then runs all
# tests in parallel.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx-light)
[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || need_pkgs+=(libnginx-mod-stream)
command -v haproxy >/dev/null 2>&1 || need_pkgs+=(haproxy)
command -v etcd >/dev/null 2>&1 || need_pkgs+=(etcd-server)
command -v serf >/dev/null 2>&1 || need_pkgs+=(serf)
command -v cloud-init >/dev/null 2>&1 || need_pkgs+=(cloud-init)
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v nft >/dev/null 2>&1 || need_pkgs+=(nftables)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  echo "installing: ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Installing must not start the system-wide services: the tests start their own instances.
  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
  apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
  rm -f /usr/sbin/policy-rc.d
fi

# Build once: the end-to-end tests start the binaries as separate processes.
cargo build --workspace --bins --quiet

if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
else
  cargo test --workspace --no-fail-fast
fi

bash packaging/check.sh
