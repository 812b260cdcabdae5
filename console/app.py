"""``careledger console``: the privacy office's web application (issue 13, ADR 0035).

Server-rendered pages (Starlette + Jinja2, autoescaped), no script. Pages:

    /login, /logout                 sign-in with password and TOTP; sign-out
    /login/oidc[/callback]          single sign-on with an OpenID Provider (ADR 0036)
    /alerts                         the queue in risk order, with filters
    /alerts/{id}                    the case as a story, its history, the actions
    /patients/{pseudonym}           a pseudonym's alerts; re-identification (ledgered)
    /history?patient=ID             who looked at a record, each line with its proof
    /history.csv?patient=ID         the same as CSV (formula-guarded), proofs included
    /history.pdf?patient=ID         the same as PDF, each line with its whole proof
    /actors/{id}                    an actor's directory entry, alerts and accesses
    /pipeline                       chain health, verification history, charts
    /health                         liveness for probes (no session)

Every page about a patient, a case or an actor is ledgered before it is answered
(``console.ledger``); when Kafka cannot take the event, the page is not shown (503).
"""

from __future__ import annotations

import datetime as dt
import inspect
import json
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Final
from urllib.parse import parse_qsl

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.staticfiles import StaticFiles

from careledger.config import Settings
from careledger.safe_text import display
from careledger_core.errors import CareledgerError
from verifiers.auditor.alerts import ALERT_STATUSES
from verifiers.auditor.alerts_view import RULE_MEANINGS, SORTS
from verifiers.auditor.casework import ACTIONS, NOTE_REQUIRED, CaseError, work_alert
from verifiers.reports.access_report import decision_summary

from .accounts import Account, AccountStore
from .charts import bar_chart, stacked_bars
from .data import AlertFilter, ConsoleData
from .ledger import ConsoleLedger, LedgerUnavailable, Viewed
from .oidc import ATTEMPT_S, BINDING_COOKIE, OidcClient, OidcError
from .sessions import COOKIE, Session, SessionStore

__all__ = ["create_app"]

log = logging.getLogger("careledger.console")

HERE: Final = Path(__file__).parent
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
ACTION_LABELS: Final = {
    "ack": "Acknowledge",
    "assign": "Assign",
    "comment": "Comment",
    "resolve": "Resolve (confirmed)",
    "dismiss": "Dismiss (false positive)",
    "reopen": "Reopen",
}
Handler = Callable[[Request, Session], Awaitable[Response] | Response]


MAX_FORM_BYTES: Final = 64 * 1024


async def _form(request: Request) -> dict[str, str]:
    """An urlencoded form (the only kind the pages post), at most ``MAX_FORM_BYTES`` by its
    Content-Length;
    the first value of each name. Anything else is an empty form (refused by the checks
    that follow: no CSRF token, no credentials)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return {}
    try:
        length = int(request.headers.get("content-length", ""))
    except ValueError:
        return {}  # chunked or no length: browsers send a length with a form
    if not 0 <= length <= MAX_FORM_BYTES:
        return {}
    body = await request.body()  # kept by the request: the handler reads it again
    if len(body) > MAX_FORM_BYTES:
        return {}
    try:
        pairs = parse_qsl(body.decode("utf-8"), keep_blank_values=True, max_num_fields=32)
    except (UnicodeDecodeError, ValueError):
        return {}
    form: dict[str, str] = {}
    for name, value in pairs:
        form.setdefault(name, value)
    return form


def _instant(text: str, *, end: bool = False) -> str:
    """``YYYY-MM-DD`` or an instant -> the store's timestamp form ('' stays '')."""
    text = text.strip()
    if not text:
        return ""
    try:
        if len(text) == 10:
            day = dt.date.fromisoformat(text) + dt.timedelta(days=1 if end else 0)
            return f"{day.isoformat()}T00:00:00.000000Z"
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date (YYYY-MM-DD) or an instant") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Console:
    def __init__(
        self,
        settings: Settings,
        accounts: AccountStore,
        *,
        ledger: ConsoleLedger | None = None,
        sessions: SessionStore | None = None,
        secure_cookies: bool = True,
        backend: Callable[[bool], Any] | None = None,
        oidc: OidcClient | None = None,
    ) -> None:
        """``backend``: makes the SQL backend of a request (argument: whether it writes);
        default a ClickHouse login per request."""
        self.settings = settings
        self.accounts = accounts
        self.ledger = ledger or ConsoleLedger(settings)
        self.sessions = sessions or SessionStore()
        self.secure_cookies = secure_cookies
        self._backend = backend
        self.oidc = oidc
        self.env = Environment(
            loader=FileSystemLoader(HERE / "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["shown"] = display  # control characters escaped (ADR 0026)
        self.env.filters["decision"] = decision_summary

    # ------------------------------------------------------------------ plumbing
    def page(self, name: str, request: Request, session: Session | None, **ctx: Any) -> Response:
        html = self.env.get_template(name).render(
            session=session, request=request, meanings=RULE_MEANINGS, **ctx
        )
        return HTMLResponse(html, status_code=ctx.get("status_code", 200))

    def error(
        self, request: Request, session: Session | None, status: int, message: str
    ) -> Response:
        return self.page("error.html", request, session, status_code=status, message=message)

    def data(self, *, writes: bool = False) -> ConsoleData:
        if self._backend is not None:
            return ConsoleData(self.settings, self._backend(writes), writes=writes)
        return ConsoleData(self.settings, writes=writes)

    def _record(self, request: Request, session: Session, viewed: Viewed) -> Response | None:
        """Ledger the access; a 503 page if it cannot be (no ledger, no page)."""
        client = request.client.host if request.client else None
        try:
            self.ledger.record(session.user, session.role, viewed, client)
        except LedgerUnavailable:
            return self.error(
                request,
                session,
                503,
                "This page is not shown: the access could not be ledgered (Kafka "
                "did not acknowledge it). Try again when the pipeline is back.",
            )
        return None

    def guarded(
        self, permission: str, handler: Handler
    ) -> Callable[[Request], Awaitable[Response]]:
        """The handler behind a live session with ``permission`` (and CSRF on POST)."""

        async def endpoint(request: Request) -> Response:
            session = self.sessions.get(request.cookies.get(COOKIE))
            if session is None:
                return RedirectResponse("/login", status_code=303)
            account = self.accounts.get(session.user)
            if account is None or account.role != session.role:
                self.sessions.drop(session.id)
                return RedirectResponse("/login", status_code=303)
            if not account.can(permission):
                return self.error(
                    request, session, 403, f"Your role ({session.role}) does not allow this page."
                )
            if request.method == "POST":
                form = await _form(request)
                token = form.get("csrf")
                if not session.csrf_ok(token if isinstance(token, str) else None):
                    return self.error(
                        request,
                        session,
                        403,
                        "The form has expired: reload the page and try again.",
                    )
            try:
                if inspect.iscoroutinefunction(handler):
                    return await handler(request, session)  # type: ignore[no-any-return]
                # the readers block (clickhouse-driver, Kafka acks): off the event loop
                return await run_in_threadpool(handler, request, session)  # type: ignore[arg-type]
            except CareledgerError as exc:
                return self.error(
                    request,
                    session,
                    503,
                    "The ledger cannot be read now: " + str(getattr(exc, "message", exc)),
                )

        return endpoint

    # ------------------------------------------------------------------ sign-in
    def login_page(self, request: Request, status: int = 200, failed: str = "") -> Response:
        label = self.oidc.config.label if self.oidc is not None else None
        return self.page(
            "login.html", request, None, status_code=status, failed=failed, oidc_label=label
        )

    async def login(self, request: Request) -> Response:
        if request.method == "GET":
            return self.login_page(request)
        form = await _form(request)
        name, password, code = (str(form.get(k, "")) for k in ("name", "password", "code"))
        account = self.accounts.sign_in(name, password, code)
        if account is None:
            log.info("console: a sign-in was refused")
            return self.login_page(
                request,
                401,
                "The name, password or code is not right (or the account is locked "
                "for a few minutes after repeated failures).",
            )
        return self._signed_in(request, account)

    def _signed_in(self, request: Request, account: Account, via: str = "") -> Response:
        """A new session for ``account`` and its cookie; ``via`` a provider: a page
        that moves on by itself (the Strict cookie would not follow a redirect chain
        the provider started)."""
        old = request.cookies.get(COOKIE)
        self.sessions.drop(old)  # a new id at every sign-in (no session fixation)
        session = self.sessions.create(account.name, account.role)
        log.info(
            "console: %s signed in as %s%s",
            account.name,
            account.role,
            f" via {via}" if via else "",
        )
        home = "/pipeline" if account.role == "operator" else "/alerts"
        response: Response
        if via:
            response = self.page("signed_in.html", request, session, home=home, via=via)
            response.delete_cookie(BINDING_COOKIE, path="/login/oidc")
        else:
            response = RedirectResponse(home, status_code=303)
        response.set_cookie(
            COOKIE,
            session.id,
            httponly=True,
            secure=self.secure_cookies,
            samesite="strict",
            path="/",
        )
        return response

    async def oidc_begin(self, request: Request) -> Response:
        """Off to the provider, with this attempt's binding in a cookie (SameSite=Lax:
        it must come back on the provider's redirect; it names no one)."""
        if self.oidc is None:
            return self.error(request, None, 404, "Single sign-on is not configured here.")
        try:
            url, binding = await run_in_threadpool(self.oidc.begin)
        except OidcError as exc:
            log.warning("console: single sign-on is unavailable: %s", exc.message)
            return self.error(
                request,
                None,
                503,
                f"Single sign-on is not available now ({exc.message}); accounts with a "
                "password and a code can still sign in.",
            )
        response = RedirectResponse(url, status_code=303)
        response.set_cookie(
            BINDING_COOKIE,
            binding,
            max_age=int(ATTEMPT_S),
            httponly=True,
            secure=self.secure_cookies,
            samesite="lax",
            path="/login/oidc",
        )
        return response

    async def oidc_callback(self, request: Request) -> Response:
        if self.oidc is None:
            return self.error(request, None, 404, "Single sign-on is not configured here.")
        q = request.query_params
        try:
            identity = await run_in_threadpool(
                self.oidc.finish,
                q.get("state", ""),
                q.get("code", ""),
                request.cookies.get(BINDING_COOKIE),
                q.get("error", ""),
            )
        except OidcError as exc:
            log.info("console: a single sign-on was refused: %s", exc.message)
            response = self.login_page(
                request, 401, f"Single sign-on did not succeed: {exc.message}."
            )
            response.delete_cookie(BINDING_COOKIE, path="/login/oidc")
            return response
        account = self.accounts.by_oidc(identity.issuer, identity.subject)
        if account is None:
            log.info("console: a single sign-on identity with no account was refused")
            response = self.error(
                request,
                None,
                403,
                f"The identity provider signed you in as {identity.shown_as}, but no console "
                "account is bound to that identity. The privacy office adds one with: "
                f"careledger console add-user NAME --role ROLE --oidc-subject {identity.subject}",
            )
            response.delete_cookie(BINDING_COOKIE, path="/login/oidc")
            return response
        return self._signed_in(request, account, via=self.oidc.config.label)

    async def logout(self, request: Request) -> Response:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is not None and request.method == "POST":
            form = await _form(request)
            token = form.get("csrf")
            if session.csrf_ok(token if isinstance(token, str) else None):
                self.sessions.drop(session.id)
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ------------------------------------------------------------------ alerts
    def alert_queue(self, request: Request, session: Session) -> Response:
        q = request.query_params
        try:
            f = AlertFilter(
                rule=q.get("rule", ""),
                status=q.get("status", ""),
                actor=q.get("actor", "").strip(),
                department=q.get("department", ""),
                patient_ref=q.get("patient_ref", "").strip(),
                start=_instant(q.get("from", "")),
                end=_instant(q.get("to", ""), end=True),
                sort=q.get("sort", "risk") if q.get("sort", "risk") in SORTS else "risk",
                limit=100,
            )
        except ValueError as exc:
            return self.error(request, session, 400, str(exc))
        with self.data() as data:
            alerts, matching = data.alerts(f)
            rules, departments = data.rules(), data.departments()
        return self.page(
            "alerts.html",
            request,
            session,
            alerts=alerts,
            matching=matching,
            rules=rules,
            departments=departments,
            statuses=ALERT_STATUSES,
            sorts=SORTS,
            q=q,
        )

    def alert_case(self, request: Request, session: Session) -> Response:
        alert_id = request.path_params["alert_id"]
        with self.data() as data:
            alert = data.alert(alert_id)
            if alert is None:
                return self.error(request, session, 404, "No such alert.")
            refused = self._record(request, session, Viewed("alert", alert_id))
            if refused is not None:
                return refused
            total, recent = data.actor_accesses(alert["actor_id"], limit=10)
        allowed = [a for a, (applies, _after) in ACTIONS.items() if alert["status"] in applies]
        can_work = self.accounts.get(session.user) is not None and session.role in (
            "analyst",
            "privacy-officer",
        )
        return self.page(
            "case.html",
            request,
            session,
            alert=alert,
            evidence=alert.get("evidence") or {},
            actions=[(a, ACTION_LABELS[a], a in NOTE_REQUIRED) for a in allowed]
            if can_work
            else [],
            actor_total=total,
            actor_recent=recent,
            message=session.take_flash(),
        )

    async def alert_action(self, request: Request, session: Session) -> Response:
        alert_id = request.path_params["alert_id"]
        form = await _form(request)
        action = str(form.get("action", ""))
        note = str(form.get("note", ""))
        to = str(form.get("to", "")) or None
        if action not in ACTIONS:
            return self.error(request, session, 400, "No such action.")
        # the action is ledgered as its status change (actor: this user), by work_alert

        def act() -> str:
            with self.data(writes=True) as data:
                try:
                    entry, _published = work_alert(
                        self.settings, data.book, alert_id, action, session.user, note, to=to
                    )
                except CaseError as exc:
                    return f"not done: {exc.message}"
                return f"{entry['status']} by {session.user}"

        session.flash = await run_in_threadpool(act)
        return RedirectResponse(f"/alerts/{alert_id}", status_code=303)

    # ------------------------------------------------------------------ people
    def pseudonym(self, request: Request, session: Session) -> Response:
        ref = request.path_params["ref"]
        refused = self._record(request, session, Viewed("pseudonym", ref))
        if refused is not None:
            return refused
        with self.data() as data:
            alerts, matching = data.alerts(AlertFilter(patient_ref=ref, limit=200))
        return self.page(
            "pseudonym.html",
            request,
            session,
            ref=ref,
            alerts=alerts,
            matching=matching,
            reidentified=session.reidentified.get(ref),
            can_reidentify=session.role == "privacy-officer",
        )

    async def reidentify(self, request: Request, session: Session) -> Response:
        ref = request.path_params["ref"]
        form = await _form(request)
        reason = str(form.get("reason", "")).strip()
        if len(reason) < 10:
            return self.error(
                request,
                session,
                400,
                "Re-identification needs a stated reason (at least 10 characters): "
                "it is ledgered with your name.",
            )

        def find() -> tuple[str, str] | None:
            with self.data() as data:
                return data.reidentify(ref)

        found = await run_in_threadpool(find)
        patient, system = found if found is not None else ("-", "")
        refused = await run_in_threadpool(
            self._record,
            request,
            session,
            Viewed(
                "reidentification",
                ref,
                patient_id=patient,
                note=f"re-identification: {reason}",
                patient_system=system,
            ),
        )
        if refused is not None:
            return refused
        if found is not None:
            session.reidentified[ref] = found
        return RedirectResponse(f"/patients/{ref}", status_code=303)

    def history(self, request: Request, session: Session) -> Response:
        from verifiers.reports.access_report import build_report, parse_range

        q = request.query_params
        patient_text = q.get("patient", "")
        sealed = self.settings.seal_events
        if not patient_text.strip():
            return self.page(
                "history.html",
                request,
                session,
                doc=None,
                q=q,
                sealed=sealed,
                default_system=self.settings.reference_patient_system,
            )
        try:
            patient = ConsoleData.patient_id(patient_text)
            start, end = parse_range(q.get("from") or "2000-01-01", q.get("to") or "2100-01-01")
        except (ValueError, CareledgerError) as exc:
            return self.error(request, session, 400, str(exc))
        # a sealed ledger's key store looks a patient up by (system, id)
        system = q.get("system", self.settings.reference_patient_system).strip()
        refused = self._record(
            request,
            session,
            Viewed("patient-history", patient, patient, patient_system=system if sealed else ""),
        )
        if refused is not None:
            return refused
        if request.url.path.endswith((".csv", ".pdf")):
            from verifiers.reports.access_report import render_csv
            from verifiers.reports.pdf import render_pdf

            with self.data() as data:
                doc = build_report(
                    data.store, patient, start, end, sealed=data.sealed_access(system)
                )
            pdf = request.url.path.endswith(".pdf")
            return Response(
                render_pdf(doc) if pdf else render_csv(doc),
                media_type="application/pdf" if pdf else "text/csv; charset=utf-8",
                headers={
                    "Content-Disposition": "attachment; filename="
                    + ('"access-report.pdf"' if pdf else '"access-report.csv"')
                },
            )
        from verifiers.reports.patient_view import build_view

        with self.data() as data:
            view = build_view(data.store, patient, start, end, sealed=data.sealed_access(system))
            ref = data.pseudonym_of(patient, system)
            alerts, matching = (
                data.alerts(AlertFilter(patient_ref=ref, limit=100)) if ref else ([], 0)
            )
        doc = view["accesses"]
        for line in doc["lines"]:
            line["proof_json"] = json.dumps(line.get("proof"), sort_keys=True)
        for rule in view["may_see_now"]:
            rule["rules_json"] = json.dumps(
                {k: v for k, v in rule.items() if k not in ("record_id", "version")},
                sort_keys=True,
                indent=1,
            )
        return self.page(
            "history.html",
            request,
            session,
            doc=doc,
            view=view,
            ref=ref,
            alerts=alerts,
            matching=matching,
            q=q,
            sealed=sealed,
            default_system=self.settings.reference_patient_system,
        )

    def actor(self, request: Request, session: Session) -> Response:
        actor_id = request.path_params["actor_id"]
        refused = self._record(request, session, Viewed("actor", actor_id))
        if refused is not None:
            return refused
        with self.data() as data:
            entry = data.directory([actor_id]).get(actor_id)
            alerts, matching = data.alerts(AlertFilter(actor=actor_id, limit=100))
            total, recent = data.actor_accesses(actor_id, limit=50)
        return self.page(
            "actor.html",
            request,
            session,
            actor_id=actor_id,
            entry=entry,
            alerts=alerts,
            matching=matching,
            total=total,
            recent=recent,
        )

    # ------------------------------------------------------------------ operators
    def pipeline(self, request: Request, session: Session) -> Response:
        from commands.status import pipeline_status

        status = pipeline_status(self.settings)
        with self.data() as data:
            days, per_rule = data.alerts_per_rule_per_day()
            hours = data.accesses_per_hour()
            runs = data.verification_history()
        charts = {
            "alerts": stacked_bars("Alerts per rule per day", days, per_rule),
            "hours": bar_chart(
                "Accesses per hour of day (UTC)", [f"{h:02d}" for h in range(24)], hours
            ),
            "runs": stacked_bars(
                "Verification runs: events verified, by result",
                [r["finished_at"][5:16] for r in runs],
                {
                    result: [r["events"] if r["result"] == result else 0 for r in runs]
                    for result in sorted({r["result"] for r in runs})
                },
            ),
        }
        return self.page("pipeline.html", request, session, status=status, runs=runs, charts=charts)

    async def health(self, _request: Request) -> Response:
        return JSONResponse({"status": "ok", "ledgered_views": self.ledger.sent})


def _headers(app: Any) -> Any:
    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers += [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await app(scope, receive, send_with_headers)

    return wrapped


def create_app(console: Console) -> Any:
    c = console
    routes = [
        Route("/login", c.login, methods=["GET", "POST"]),
        Route("/login/oidc", c.oidc_begin),
        Route("/login/oidc/callback", c.oidc_callback),
        Route("/logout", c.logout, methods=["GET", "POST"]),
        Route("/", lambda _r: RedirectResponse("/alerts", status_code=303)),
        Route("/alerts", c.guarded("alerts", c.alert_queue)),
        Route("/alerts/{alert_id}", c.guarded("alerts", c.alert_case)),
        Route("/alerts/{alert_id}/action", c.guarded("work", c.alert_action), methods=["POST"]),
        Route("/patients/{ref}", c.guarded("patients", c.pseudonym)),
        Route(
            "/patients/{ref}/reidentify",
            c.guarded("reidentify", c.reidentify),
            methods=["POST"],
        ),
        Route("/history", c.guarded("history", c.history)),
        Route("/history.csv", c.guarded("history", c.history)),
        Route("/history.pdf", c.guarded("history", c.history)),
        Route("/actors/{actor_id}", c.guarded("alerts", c.actor)),
        Route("/pipeline", c.guarded("health", c.pipeline)),
        Route("/health", c.health),
    ]
    app = Starlette(routes=routes)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    return _headers(app)
