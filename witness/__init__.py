"""The witness wing: ``careledger witness``, a C2SP tlog-witness another institution runs.

A partner hospital (or a regulator) runs it with its own Ed25519 key and a list of the
logs (chain origins and the log's public keys) it cosigns. The log asks it to cosign
each new checkpoint with ``POST /add-checkpoint``; it cosigns only a checkpoint the log
signed that is consistent (RFC 6962 consistency proof) with the last one it cosigned,
keeps that state durably (SQLite, one transaction per request), and keeps both signed
checkpoints as evidence when the log shows it a fork or a rewritten history.

Modules: ``config`` (settings and the logs file), ``store`` (the state), ``service``
(the protocol over the state), ``http`` (Starlette app), ``server`` (the command).
The protocol itself is pure and lives in ``careledger_core.witness``.
"""
