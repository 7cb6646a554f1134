#!/usr/bin/env sh
# Starts a vastrpc worker that joins an endpoint: the entry point of worker/Dockerfile, usable
# as is on any machine with the vastrpc package installed (a VM, a bare-metal GPU host).
#
#   VASTRPC_CONTROL_ADDRESS  host:port of the control service (required)
#   VASTRPC_API_KEY          its API key (required)
#   VASTRPC_JOIN             the deployment to serve, NAME or NAME:TAG (required)
#   VASTRPC_WORKER_HOST      the address clients reach this worker at (default 127.0.0.1)
#   VASTRPC_TLS_CA, VASTRPC_TLS_CERT, VASTRPC_TLS_KEY   TLS, when the control service uses it
set -eu
missing=""
for name in VASTRPC_CONTROL_ADDRESS VASTRPC_API_KEY VASTRPC_JOIN; do
    eval "value=\${$name:-}"
    [ -n "$value" ] || missing="$missing $name"
done
if [ -n "$missing" ]; then
    echo "vastrpc worker: set$missing (see worker/README.md)" >&2
    exit 2
fi
exec "${PYTHON:-python3}" -P -m vastrpc worker --control "$VASTRPC_CONTROL_ADDRESS" --join "$VASTRPC_JOIN" "$@"
