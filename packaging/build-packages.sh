#!/usr/bin/env bash
# Builds the release binaries and the packages: rke2-bootstrap and rke2-lb-sidecar as .deb, and
# as .rpm when the rpm packager can be installed. Prints the stripped binary sizes.
#
#   packaging/build-packages.sh [--no-rpm] [--debug]
#
# Output: <target dir>/packages/ (the target dir is CARGO_TARGET_DIR, else ./target).
# The release profile is slow to build (fat LTO); the packagers reuse the binaries it built.
# --debug: .deb only, from the dev profile's binaries (stripped, fast compression), for test runs
# (tests/systemd/run.sh) that must not wait for a release build. Never ship these.
set -euo pipefail

with_rpm=1
profile=release
for arg in "$@"; do
	case "$arg" in
	--no-rpm) with_rpm=0 ;;
	--debug)
		profile=dev
		with_rpm=0
		;;
	*)
		sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//' >&2
		exit 2
		;;
	esac
done

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$here")
target=${CARGO_TARGET_DIR:-$repo/target}
out=$target/packages
bins=(rke2-bootstrap rke2-lb-sidecar)
crates=(agent lb-sidecar)

# ensure_tool SUBCOMMAND CRATE: `cargo SUBCOMMAND` exists, or is installed from crates.io.
ensure_tool() {
	if ! cargo "$1" --version >/dev/null 2>&1; then
		echo "== installing $2" >&2
		cargo install --locked "$2" >&2
	fi
}

cd "$repo"
echo "== cargo build --profile $profile" >&2
cargo build --profile "$profile" --locked -p rke2-bootstrap -p rke2-lb-sidecar >&2

mkdir -p "$out"
ensure_tool deb cargo-deb
for i in "${!bins[@]}"; do
	echo "== deb ${bins[$i]}" >&2
	# --no-build: package exactly the binaries built above (no second build).
	if [ "$profile" = release ]; then
		cargo deb --no-build -p "${bins[$i]}" -o "$out/" >&2
	else
		# cargo-deb maps the assets' target/release/ paths to the profile's directory.
		cargo deb --no-build --profile "$profile" --fast -p "${bins[$i]}" -o "$out/" >&2
	fi
done

if ((with_rpm)); then
	if ensure_tool generate-rpm cargo-generate-rpm; then
		for i in "${!bins[@]}"; do
			echo "== rpm ${bins[$i]}" >&2
			# From the crate's directory, so the metadata's relative paths resolve against it.
			(cd "$repo/${crates[$i]}" && cargo generate-rpm --target-dir "$target" -o "$out/") >&2
		done
	else
		echo "== rpm: could not install cargo-generate-rpm; no .rpm built" >&2
	fi
fi

# is_stripped FILE: no symbol table left.
is_stripped() {
	if command -v readelf >/dev/null; then
		if readelf -S "$1" | grep -q '\.symtab'; then
			return 1
		fi
	else
		file "$1" | grep -q ', stripped'
	fi
}

echo
echo "Packages in $out:"
for f in "$out"/*.deb "$out"/*.rpm; do
	[ -e "$f" ] && printf '  %-48s %9d bytes\n' "$(basename "$f")" "$(stat -c %s "$f")"
done
bin_dir=release
[ "$profile" = release ] || bin_dir=debug
echo "Binaries ($profile profile; the packaged copies are stripped):"
for b in "${bins[@]}"; do
	f=$target/$bin_dir/$b
	size=$(stat -c %s "$f")
	state=stripped
	is_stripped "$f" || state="NOT stripped"
	printf '  %-20s %9d bytes (%s MiB), %s\n' "$b" "$size" \
		"$(awk -v s="$size" 'BEGIN { printf "%.2f", s / 1048576 }')" "$state"
done
