#!/usr/bin/env bash
# Install OpenStack Ironic from PyPI into its own venv, as the reference for bench/api.py.
#
# Idempotent: re-running skips the install when the venv already has Ironic, and only
# checks that the all-in-one `ironic` command and `ironic-dbsync` are there and that a
# schema can be created on SQLite from ironic.conf.template.
#
#   bench/ironic/setup.sh            # install (or verify) into bench/ironic/.venv
#   IRONIC_VERSION=29.0.0 bench/ironic/setup.sh   # pin a release instead of the latest
#
# Nothing here is committed but this script and the template: the venv lives in
# bench/ironic/.venv (ignored by the top-level `.venv/` rule).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${IRONIC_VENV:-$here/.venv}"
python="${IRONIC_PYTHON:-python3.11}"
spec="ironic${IRONIC_VERSION:+==$IRONIC_VERSION}"

if [[ ! -x "$venv/bin/python" ]]; then
    echo "creating $venv with $python"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --upgrade pip
fi

if ! "$venv/bin/python" -c "import ironic" 2>/dev/null; then
    echo "installing $spec (a few minutes: it pulls the oslo libraries)"
    "$venv/bin/pip" install --quiet "$spec"
fi

for cmd in ironic ironic-dbsync; do
    [[ -x "$venv/bin/$cmd" ]] || { echo "missing $venv/bin/$cmd" >&2; exit 1; }
done

# Smoke test: render the template into a scratch dir and create the schema there.
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT
sed -e "s#@DATA_DIR@#$scratch#g" -e "s#@PORT@#6385#g" "$here/ironic.conf.template" \
    > "$scratch/ironic.conf"
"$venv/bin/ironic-dbsync" --config-file "$scratch/ironic.conf" create_schema >/dev/null 2>&1 || {
    echo "ironic-dbsync create_schema failed; rerun by hand to see why:" >&2
    echo "  $venv/bin/ironic-dbsync --config-file $scratch/ironic.conf create_schema" >&2
    trap - EXIT
    exit 1
}
version="$("$venv/bin/python" -c 'from importlib.metadata import version; print(version("ironic"))')"
echo "ironic $version ready in $venv"
