#!/usr/bin/env bash
# `make fuzz-smoke`: builds the cargo-fuzz targets in fuzz/ and runs each for
# FUZZ_SECONDS (default 30) from its seed corpus (fuzz/corpus/<target>).
# Fails, naming the target and the crashing input, on any crash, panic,
# timeout or broken property. Needs the nightly toolchain; installs
# cargo-fuzz into ~/.cache/securechat/cargo-fuzz once.
#
# New inputs libFuzzer finds go to a temporary corpus, so the committed
# seeds stay small. FUZZ_TARGETS="a b" runs only those targets.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds="${FUZZ_SECONDS:-30}"
tool_root="$HOME/.cache/securechat/cargo-fuzz"
export PATH="$tool_root/bin:$HOME/.cargo/bin:$PATH"
# The fuzz workspace builds with sanitizer-coverage flags: never share the
# main workspace's target dir (the Makefile exports one).
export CARGO_TARGET_DIR="${FUZZ_TARGET_DIR:-$root/fuzz/target}"

if ! cargo +nightly --version >/dev/null 2>&1; then
	echo "fuzz-smoke: the nightly toolchain is missing (rustup toolchain install nightly)" >&2
	exit 1
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
	echo "== installing cargo-fuzz into $tool_root (once)"
	cargo install --locked cargo-fuzz --root "$tool_root"
fi

# The workspace forbids unsafe code, so AddressSanitizer has little to find
# and would double the build and run time: coverage-guided runs without it.
fuzz=(cargo +nightly fuzz)
flags=(--sanitizer none)
targets="${FUZZ_TARGETS:-$("${fuzz[@]}" list)}"

echo "== building the fuzz targets"
"${fuzz[@]}" build "${flags[@]}"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failed=()
summary=()
for target in $targets; do
	echo "== $target (${seconds}s)"
	mkdir -p "$work/$target" "fuzz/artifacts/$target"
	log="$work/$target.log"
	if "${fuzz[@]}" run "${flags[@]}" "$target" "$work/$target" "fuzz/corpus/$target" -- \
		-max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1; then
		execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
		took=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
		summary+=("$(printf '%-14s %10s execs in %ss' "$target" "${execs:-?}" "${took:-?}")")
	else
		tail -n 40 "$log"
		artifact=$(sed -n 's/.*Test unit written to \(.*\)$/\1/p' "$log" | tail -1)
		echo "fuzz-smoke: $target FAILED${artifact:+; the input is $artifact}" >&2
		echo "  reproduce: cargo +nightly fuzz run ${flags[*]} $target ${artifact:-<input>}" >&2
		failed+=("$target")
	fi
done

echo
echo "== fuzz-smoke summary"
printf '  %s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
	echo "fuzz-smoke: crashes in: ${failed[*]}" >&2
	exit 1
fi
