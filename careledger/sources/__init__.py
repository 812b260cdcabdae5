"""Source identity on Kafka (ADR 0010): the registry topic, key events, ``careledger source``.

The *sources topic* (``Settings.topic_sources``) holds reference records of two kinds:

* ``source-key`` (``record_id = <source_id>/<key_id>``): a registrar-signed key event
  registering (``active``) or revoking a source's key from ``valid_from`` on. Version 1
  is the registration; each later change of the same key is the next version.
* ``source-heartbeat`` (``record_id = <source_id>/<epoch>/<beat>``): a source-signed
  "alive, sent up to ``last_seq``", produced by the SDK.

Reading (``read_registry``, ``read_heartbeats``) goes from the beginning of every
partition to its end *as of the call* (watermarks, ``assign``; no consumer group, no
commits). Every key event is checked with ``verify_key_event`` against the registrar
keys the caller trusts (``Settings.trusted_registrar_keys``, never the topic itself):
one that does not verify is skipped and reported as a :class:`SourceProblem`, never
applied. A key id belongs to the first source that registered it.

The package: ``reading`` (the registry, heartbeats, key summaries), ``publishing``
(registrar-signed key events, ``ensure_local_source``) and ``cli``.

CLI (``careledger source``): ``keygen`` (a source's Ed25519 key, mode 0600), ``register``
and ``revoke`` (signed with ``Settings.registrar_key``), ``list`` (the registry as read
from Kafka). Private keys are never printed or logged.
"""

from .cli import command_source, configure_source
from .publishing import ensure_local_source, publish_key_event, register_key, revoke_key
from .reading import (
    READ_TIMEOUT_S,
    KeyEventRecord,
    KeySummary,
    ReceivedHeartbeat,
    SourceProblem,
    SourcesSnapshot,
    load_registrar_keys,
    parse_time,
    read_heartbeats,
    read_registry,
    read_sources,
    summarize_keys,
    utc_now,
)

__all__ = [
    "READ_TIMEOUT_S",
    "KeyEventRecord",
    "KeySummary",
    "ReceivedHeartbeat",
    "SourceProblem",
    "SourcesSnapshot",
    "command_source",
    "configure_source",
    "ensure_local_source",
    "load_registrar_keys",
    "parse_time",
    "publish_key_event",
    "read_heartbeats",
    "read_registry",
    "read_sources",
    "register_key",
    "revoke_key",
    "summarize_keys",
    "utc_now",
]
