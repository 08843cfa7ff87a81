#!/usr/bin/env bash
# Starts a real S3-compatible server on loopback for the object-store tests
# and bench: moto's server (moto[server] from PyPI, installed into the venv
# by scripts/python-env.sh), in memory, on a free port.
#
# Prints the endpoint (http://127.0.0.1:PORT) as its first line on stdout
# once the server answers, then serves until its stdin closes (the tests
# hold it open and the server goes when they exit) or it is killed.
#
#   exec 3< <(scripts/s3-server.sh) ; read -r endpoint <&3
# Any credentials are accepted; buckets are created by the client.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
python=$("$root/scripts/python-env.sh")
exec "$python" -u -c '
import logging, sys
logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
from moto.server import ThreadedMotoServer
server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
server.start()
host, port = server.get_host_and_port()
print(f"http://{host}:{port}", flush=True)
try:
    sys.stdin.read()
finally:
    server.stop()
'
