"""Container health probe: exit 0 when GET http://127.0.0.1:$ENCODER_PORT<path> answers 200.

The slim runtime image has no curl; this uses the standard library only, so the
Dockerfile HEALTHCHECK (`/health`) and the compose healthcheck (`/ready`) need nothing else.
Usage: python healthcheck.py [PATH]   (PATH defaults to /health)
"""

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    path = sys.argv[1] if len(sys.argv) > 1 else "/health"
    port = os.environ.get("ENCODER_PORT", "8000")
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=3) as response:
            return 0 if response.status == 200 else 1
    except (urllib.error.URLError, OSError) as error:
        # A 503 from /ready (loading, draining) lands here too: unhealthy, with the reason.
        print(f"healthcheck {path}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
