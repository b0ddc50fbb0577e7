#!/usr/bin/env bash
# The HTTP server's acceptance, against the real switchyard-server binary on
# 127.0.0.1 serving the real models of models.toml (fetch them first: cargo
# run -p switchyard-testkit --bin fetch-models) plus a tiny random-weight
# Stable Diffusion for the images endpoint:
#   1. the official `openai` Python package calls every OpenAI-compatible
#      endpoint, and a stream it closes early leaves the session list
#      within a second (openai_client.py);
#   2. a bounded load test: 32 streaming chat clients and 8 embedding
#      clients for LOAD_SECONDS (default 20, at most 60): no errors, no
#      dropped streams (load.py; prints requests/s and p50/p99 latency);
#   3. schemathesis against /openapi.json: no 5xx, responses as described;
#   4. SIGTERM: the server drains and exits cleanly.
# Installs the clients into a virtual environment under target/. Run from
# anywhere: bash crates/server/tests/clients/acceptance.sh
# PROFILE=release tests the release binary (default: the test build, whose
# own crates are unoptimised: slower, so its load figures are not the
# service's speed).
set -euo pipefail
root="$(cd "$(dirname "$0")/../../../.." && pwd)"
cd "$root"
profile=${PROFILE:-debug}
venv=target/openai-client-venv

if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --disable-pip-version-check openai httpx

if [ "$profile" = release ]; then
    cargo build --quiet --release -p switchyard-server
else
    cargo build --quiet -p switchyard-server
fi
# The real models of models.toml, plus a tiny random-weight Stable
# Diffusion for the images endpoint (no real SD weights can be fetched).
work=$(mktemp -d)
cargo run --quiet -p switchyard-testkit --bin write-tiny-sd -- "$work/tiny-sd" >/dev/null
config="$work/models.toml"
sed "s|^path = \"models/|path = \"$root/models/|" models.toml >"$config"
cat >>"$config" <<TOML

[[models]]
id = "tiny-sd"
kind = "text-to-image"
path = "$work/tiny-sd"
TOML
port=$("$venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
log=$(mktemp)
"target/$profile/switchyard-server" --config "$config" --bind "127.0.0.1:$port" >"$log" 2>&1 &
pid=$!
cleanup() {
    kill "$pid" 2>/dev/null || true
    rm -rf "$log" "$work"
}
trap cleanup EXIT

# Wait (up to a minute) for /health.
"$venv/bin/python" - "$base" <<'PY'
import sys, time, urllib.request
for _ in range(600):
    try:
        with urllib.request.urlopen(sys.argv[1] + "/health", timeout=1) as r:
            if r.status == 200:
                sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("the server did not come up")
PY

"$venv/bin/python" crates/server/tests/clients/openai_client.py "$base" smollm2 minilm tiny-sd
"$venv/bin/python" crates/server/tests/clients/load.py "$base" smollm2 minilm "${LOAD_SECONDS:-20}"

# schemathesis against /openapi.json: no 5xx, and every response matches
# the description (status, content type, schema). Fixed seed: repeatable.
"$venv/bin/pip" install --quiet --disable-pip-version-check schemathesis
# (From the scratch folder: it keeps a .schemathesis cache where it runs.)
(cd "$work" && "$root/$venv/bin/schemathesis" run "$base/openapi.json" --seed 1 --max-examples 25 \
    --checks not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance)

# SIGTERM: the server drains and exits cleanly.
kill -TERM "$pid"
if wait "$pid"; then
    echo "ok: the server stopped cleanly on SIGTERM"
else
    echo "FAILED: the server exited with status $? on SIGTERM"
    cat "$log"
    exit 1
fi
