"""``careledger console``: run the privacy office's console, manage its accounts.

* ``serve [--host H] [--port P] [--tls-cert F --tls-key F]``: the web application.
  Without TLS it listens on loopback only (behind a TLS-terminating proxy or for one
  person at the machine); a non-loopback address needs a certificate.
* ``add-user NAME --role ROLE [--password-stdin]``: a new account (or new credentials
  for an existing one); prints the TOTP secret and its ``otpauth://`` URI once.
  ``--oidc-subject SUB [--oidc-issuer URL]``: an account that signs in only through the
  OpenID Provider as that subject (no password, no TOTP; ADR 0036).
* ``users``: the accounts and their roles.

Exit status: 0 done, 2 usage or infrastructure error (one line).
"""

from __future__ import annotations

import argparse
import getpass
import ipaddress
import logging
import socket
import sys
from pathlib import Path

from careledger.config import Settings
from careledger_core.errors import CareledgerError

__all__ = ["command_console", "configure_console"]

log = logging.getLogger("careledger.console")


def _accounts_path(args: argparse.Namespace, settings: Settings) -> Path:
    return Path(args.accounts) if args.accounts else settings.run_dir / "console" / "accounts.json"


def configure_console(parser: argparse.ArgumentParser) -> None:
    from .accounts import ROLES

    parser.add_argument(
        "--accounts", help="the account file (default: <run_dir>/console/accounts.json)"
    )
    sub = parser.add_subparsers(dest="console_command", metavar="ACTION")
    p = sub.add_parser("serve", help="run the web console")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8443)
    p.add_argument("--tls-cert", help="PEM certificate (chain) to serve HTTPS with")
    p.add_argument("--tls-key", help="its PEM private key")
    p = sub.add_parser("add-user", help="add an account (or give one new credentials)")
    p.add_argument("name")
    p.add_argument("--role", required=True, choices=ROLES)
    p.add_argument(
        "--password-stdin", action="store_true", help="read the password from standard input"
    )
    p.add_argument(
        "--oidc-subject",
        help="bind the account to this subject (`sub`) at the OpenID Provider instead of "
        "a password and TOTP",
    )
    p.add_argument(
        "--oidc-issuer", help="the provider's issuer (default: the console_oidc_issuer setting)"
    )
    sub.add_parser("users", help="list the accounts and their roles")


def _error(message: str) -> int:
    print(f"careledger console: {message}", file=sys.stderr)
    return 2


def command_console(args: argparse.Namespace, settings: Settings) -> int:
    from .accounts import AccountError, AccountStore, provisioning_uri

    action = getattr(args, "console_command", None)
    if action is None:
        return _error("give an action: serve, add-user or users")
    try:
        accounts = AccountStore(_accounts_path(args, settings))
    except AccountError as exc:
        return _error(exc.message)
    if action == "users":
        for name in accounts.names():
            account = accounts.get(name)
            if account is None:
                continue
            how = (
                f"single sign-on at {account.oidc_issuer}"
                if account.single_sign_on
                else "password + TOTP"
            )
            print(f"{name}\t{account.role}\t{how}")
        return 0
    if action == "add-user" and args.oidc_subject:
        issuer = args.oidc_issuer or settings.console_oidc_issuer
        if not issuer:
            return _error("give --oidc-issuer, or set console_oidc_issuer")
        try:
            account = accounts.add_oidc(args.name, args.role, issuer, args.oidc_subject)
        except AccountError as exc:
            return _error(exc.message)
        print(
            f"account {account.name} ({account.role}) written to {accounts.path}: signs in "
            f"through {issuer} as subject {account.oidc_subject}"
        )
        return 0
    if action == "add-user":
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            password = getpass.getpass("password: ")
            if getpass.getpass("again: ") != password:
                return _error("the passwords differ")
        try:
            account = accounts.add(args.name, args.role, password)
        except AccountError as exc:
            return _error(exc.message)
        print(f"account {account.name} ({account.role}) written to {accounts.path}")
        print(f"TOTP secret (enter it in an authenticator app; shown once): {account.totp_secret}")
        print(f"or as a URI: {provisioning_uri(account)}")
        return 0
    return _serve(args, settings, accounts)


def _serve(args: argparse.Namespace, settings: Settings, accounts: object) -> int:
    import uvicorn

    from .accounts import AccountStore
    from .app import Console, create_app

    assert isinstance(accounts, AccountStore)
    tls = bool(args.tls_cert and args.tls_key)
    if bool(args.tls_cert) != bool(args.tls_key):
        return _error("--tls-cert and --tls-key go together")
    try:
        loopback = ipaddress.ip_address(args.host).is_loopback
    except ValueError:
        loopback = args.host == "localhost"
    if not tls and not loopback:
        return _error(
            f"without TLS the console listens on loopback only ({args.host} is not): "
            "give --tls-cert and --tls-key, or put it behind a TLS proxy on loopback"
        )
    if not accounts.names():
        return _error(
            f"no account in {accounts.path}: add one with "
            "`careledger console add-user NAME --role privacy-officer`"
        )
    if settings.require_source_signatures:
        from careledger.keys import load_source_key

        if load_source_key(settings) is None:
            return _error(
                "the console ledgers every view as a signed access event and has no source "
                "key: set CARELEDGER_SOURCE_KEY (or run it where `careledger demo` wrote "
                ".run/careledger.toml)"
            )
    try:  # say it once, now, rather than on every page
        from careledger.storage.backend import ClickHouseBackend

        backend = ClickHouseBackend.from_settings(settings, "reader")
        backend.execute("SELECT 1")
        backend.close()
    except CareledgerError as exc:
        return _error(f"cannot reach ClickHouse: {getattr(exc, 'message', exc)}")
    from .oidc import OidcClient, OidcConfig, OidcError

    try:
        oidc_config = OidcConfig.from_settings(settings)
    except OidcError as exc:
        return _error(exc.message)
    oidc = OidcClient(oidc_config) if oidc_config is not None else None
    if oidc is not None:
        try:  # say it now; local accounts still sign in while the provider is away
            oidc.provider()
        except OidcError as exc:
            log.warning("single sign-on is not available yet: %s", exc.message)
    console = Console(settings, accounts, secure_cookies=True, oidc=oidc)
    config = uvicorn.Config(
        create_app(console),
        host=args.host,
        port=args.port,
        log_config=None,
        access_log=False,
        server_header=False,
        proxy_headers=False,
        ssl_certfile=args.tls_cert if tls else None,
        ssl_keyfile=args.tls_key if tls else None,
    )
    scheme = "https" if tls else "http"
    host = args.host if args.host != "0.0.0.0" else socket.gethostname()
    print(f"careledger console on {scheme}://{host}:{args.port}/ (Ctrl-C to stop)", flush=True)
    uvicorn.Server(config).run()
    console.ledger.close()
    if oidc is not None:
        oidc.close()
    return 0
