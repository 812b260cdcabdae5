"""``python -m careledger.probe URL [--ca FILE]``: a container healthcheck without curl.

Exit 0 when ``GET URL`` answers 200 within 3 seconds, else 1 with one line saying what
it got (the service's own reason for a 503). HTTPS is checked against ``--ca``."""

from __future__ import annotations

import argparse
import ssl
import sys
import urllib.error
import urllib.request


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m careledger.probe")
    parser.add_argument("url")
    parser.add_argument("--ca", help="CA file an HTTPS server's certificate is checked with")
    parser.add_argument("--timeout", type=float, default=3.0)
    args = parser.parse_args(argv)
    context = ssl.create_default_context(cafile=args.ca) if args.ca else None
    try:
        with urllib.request.urlopen(args.url, timeout=args.timeout, context=context) as r:
            if r.status == 200:
                return 0
            print(f"probe: {args.url} answered {r.status}", file=sys.stderr)
    except urllib.error.HTTPError as exc:
        reason = exc.read(500).decode("utf-8", "replace").strip()
        print(f"probe: {args.url} answered {exc.code}: {reason}", file=sys.stderr)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"probe: {args.url}: {exc}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
