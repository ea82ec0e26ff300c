#!/usr/bin/env bash
# Build dist/kallm: one self-contained executable (PyInstaller onefile, kallm.spec) that
# carries Python, kallm, its dependencies and its package data (the embedding table, the
# price list, the guard's word lists).
#
#   scripts/build-binary.sh            # build (installs the pinned PyInstaller if missing)
#   scripts/build-binary.sh --clean    # also drop PyInstaller's caches first
#
# Environment: PYTHON (default python3) is the interpreter whose site-packages hold kallm
# and its dependencies (`pip install -e .`); the binary bundles what that interpreter sees.
# Check the result with scripts/smoke-binary.sh.
set -euo pipefail

PYINSTALLER_VERSION="6.22.3"
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
cd "$ROOT"

clean=()
for arg in "$@"; do
    case "$arg" in
        --clean) clean=(--clean) ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "build-binary: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

# The binary must bundle this checkout's kallm with its dependencies installed.
if ! "$PYTHON" - "$ROOT" <<'EOF'
import pathlib, sys
import aiohttp, numpy, platformdirs, rich, tomli_w, typer  # noqa: F401  the runtime deps
import kallm
root = pathlib.Path(sys.argv[1]).resolve()
where = pathlib.Path(kallm.__file__).resolve().parent
sys.exit(0 if where == root / "kallm" else f"kallm imports from {where}, not {root}/kallm")
EOF
then
    echo "build-binary: install this checkout first: $PYTHON -m pip install -e ." >&2
    exit 1
fi

have="$("$PYTHON" -c 'import PyInstaller; print(PyInstaller.__version__)' 2>/dev/null || true)"
if [[ "$have" != "$PYINSTALLER_VERSION" ]]; then
    echo "build-binary: installing pyinstaller==$PYINSTALLER_VERSION (found: ${have:-none})"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check \
        "pyinstaller==$PYINSTALLER_VERSION"
fi

# One build at a time per checkout (two test runs at once would share PyInstaller's work
# folder); the result is moved into dist/ in one rename, so a running dist/kallm is never
# overwritten in place.
mkdir -p "$ROOT/build" "$ROOT/dist"
exec 9>"$ROOT/build/build-binary.lock"
flock 9

start=$(date +%s.%N)
staging="$ROOT/build/pyinstaller-dist"
rm -rf "$staging"
"$PYTHON" -m PyInstaller --noconfirm "${clean[@]}" --log-level WARN \
    --distpath "$staging" --workpath "$ROOT/build/pyinstaller" "$ROOT/kallm.spec"
end=$(date +%s.%N)

[[ -x "$staging/kallm" ]] || { echo "build-binary: PyInstaller produced no binary" >&2; exit 1; }
"$staging/kallm" --version >/dev/null || { echo "build-binary: kallm --version failed" >&2; exit 1; }
binary="$ROOT/dist/kallm"
mv -f "$staging/kallm" "$binary"
rm -rf "$staging"

size=$(stat -c %s "$binary")
awk -v s="$size" -v a="$start" -v b="$end" -v p="$binary" 'BEGIN {
    printf "build-binary: %s  %.1f MB (%d bytes), built in %.1f s\n", p, s / 1048576, s, b - a
}'
