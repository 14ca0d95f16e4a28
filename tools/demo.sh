#!/bin/sh
# Issue a real certificate from a local pebble (Debian's ACME test server)
# through all eight roles, then show where the files are.
set -eu
cd "$(dirname "$0")/.."
ROOT=$(pwd)
DEMO="$ROOT/demo"
PYTHON="$ROOT/.venv/bin/python"

rm -rf "$DEMO"
mkdir -p "$DEMO/challenge" "$DEMO/certs"
chmod 755 "$DEMO" "$DEMO/challenge"

"$PYTHON" -m tests.pebble --challenge-dir "$DEMO/challenge" --state-file "$DEMO/pebble.env" \
    >"$DEMO/pebble.out" 2>&1 &
PEBBLE_PID=$!
trap 'kill $PEBBLE_PID 2>/dev/null; wait $PEBBLE_PID 2>/dev/null || true' EXIT INT TERM

i=0
while [ ! -s "$DEMO/pebble.env" ]; do
    i=$((i + 1))
    if [ $i -gt 300 ] || ! kill -0 $PEBBLE_PID 2>/dev/null; then
        echo "demo: pebble did not start:" >&2
        cat "$DEMO/pebble.out" >&2
        exit 1
    fi
    sleep 0.1
done
. "$DEMO/pebble.env"
echo "demo: pebble is up at $DIRECTORY_URL"

set -x
"$ROOT/.venv/bin/letskencrypt" -v -n -N \
    --server "$DIRECTORY_URL" --ca-bundle "$CA_BUNDLE" --trust-anchors "$TRUST_ANCHORS" \
    -C "$DEMO/challenge" -c "$DEMO/certs" \
    -f "$DEMO/account/privkey.pem" -k "$DEMO/domain/privkey.pem" \
    demo.example.org www.demo.example.org
set +x

echo
echo "demo: certificate issued through netproc, acctproc, keyproc, dnsproc, chngproc,"
echo "      revokeproc, certproc and fileproc:"
ls -l "$DEMO/certs/" "$DEMO/domain/" "$DEMO/account/"
"$PYTHON" - "$DEMO/certs/fullchain.pem" <<'PY'
import sys
from cryptography import x509
chain = x509.load_pem_x509_certificates(open(sys.argv[1], "rb").read())
leaf = chain[0]
names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
print(f"demo: leaf serial {leaf.serial_number:x}, names {names.get_values_for_type(x509.DNSName)}")
print(f"demo: valid {leaf.not_valid_before_utc} .. {leaf.not_valid_after_utc}, chain of {len(chain)}")
PY

echo
echo "demo: the same command again: the certificate is current, so exit 2 and no order"
echo "demo: (the only request: the CA's directory, to look for renewal information; --no-ari: none)"
status=0
"$ROOT/.venv/bin/letskencrypt" -v \
    --server "$DIRECTORY_URL" --ca-bundle "$CA_BUNDLE" --trust-anchors "$TRUST_ANCHORS" \
    -C "$DEMO/challenge" -c "$DEMO/certs" \
    -f "$DEMO/account/privkey.pem" -k "$DEMO/domain/privkey.pem" \
    demo.example.org www.demo.example.org || status=$?
echo "demo: exit status $status"
[ "$status" = 2 ]
echo "demo: files are in $DEMO/certs (keys in $DEMO/account and $DEMO/domain)"
