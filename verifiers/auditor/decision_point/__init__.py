"""The consent decision point: "may actor A access patient P now?", answered from the
ledgered consents, ledgered itself, and provable later (ADR 0024).

* ``model``   the question (strictly decoded), the decision record, its ledger event;
* ``engine``  the consent ledger as read up to a position, the answer, the replay (pure);
* ``auth``    requests from other institutions, signed with their registered key;
* ``store``   reading committed consents and ledgered decisions from ClickHouse;
* ``ledger``  sending decisions to Kafka (raw record + signed event), group-committed;
* ``service`` the decision point (refresh, decide, ledger); ``http`` its HTTP endpoint;
* ``replay``  every ledgered decision checked and replayed as of its position;
* ``cli``     ``careledger consent decide | serve | replay``.
"""

from __future__ import annotations

from .auth import Refused, RequestAuthenticator, signed_request_headers
from .engine import ConsentLedger, LedgeredConsent, answer, build_record, replay_answer
from .model import Question, QuestionError, Requester, parse_question
from .service import DecisionPoint, NotLedgered

__all__ = [
    "ConsentLedger",
    "DecisionPoint",
    "LedgeredConsent",
    "NotLedgered",
    "Question",
    "QuestionError",
    "Refused",
    "RequestAuthenticator",
    "Requester",
    "answer",
    "build_record",
    "parse_question",
    "replay_answer",
    "signed_request_headers",
]
