#!/usr/bin/env bash
# The dashboard's front-end libraries, from the npm registry at the versions pinned in ui/package-lock.json,
# copied into the Python package (src/perdure/dashboard/vendor/) so the server serves every asset itself:
# no CDN, works air-gapped. Run by `make install`; safe to run again.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
vendor="$here/src/perdure/dashboard/vendor"
command -v npm >/dev/null || {
    echo "build-ui: npm is missing (Debian: apt-get install npm); the dashboard will say so" >&2
    exit 0
}
if [ ! -f "$here/ui/node_modules/.package-lock.json" ] ||
    [ "$here/ui/package-lock.json" -nt "$here/ui/node_modules/.package-lock.json" ]; then
    npm ci --prefix "$here/ui" --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null
fi
modules="$here/ui/node_modules"
mkdir -p "$vendor"
install -m 0644 \
    "$modules/chart.js/dist/chart.umd.min.js" \
    "$modules/cytoscape/dist/cytoscape.min.js" \
    "$modules/cytoscape-dagre/dist/cytoscape-dagre.js" \
    "$modules/swagger-ui-dist/swagger-ui-bundle.js" \
    "$modules/swagger-ui-dist/swagger-ui.css" \
    "$vendor/"
