"""Del (the guide's "Sådan deler du en sag"): search users of the case's own organisation by
name, add each chosen one to "Vil blive delt med", and confirm with Del.

The dialog on the case page (a `<dialog>`, `static/del.js`) and the page `/sager/N/del` that
stands in for it without script post the same form. Searching finds customers of the
requester's organisation only (`lifecycle.search_users`), and a post is checked again against
the organisation before anything is shared: an address from elsewhere, whatever the form names,
shares nothing. Each share is `lifecycle.share` — the new party gets the "shared" mail.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from gateway import lifecycle
from gateway.addresses import canonical
from gateway.errors import Refused
from gateway.http.portal.cases import case_of
from gateway.http.portal.context import Portal, Visitor, not_found, read_form
from gateway.http.portal.i18n import translator
from gateway.model import Status
from store import portal_cases
from store.portal_cases import CaseHead, Person

SEARCH_LIMIT = 20


def _addresses(values: list[str]) -> list[str]:
    return list(dict.fromkeys(a for a in (canonical(v) for v in values[:50]) if a is not None))


class Share:
    def __init__(self, portal: Portal) -> None:
        self.portal = portal

    async def page(self, request: Request) -> Response:
        """Without script: search (GET), add (`tilfoej`) or remove (`fjern`) one at a time."""
        visitor, user = await self.portal.user_visitor(request)
        head = await case_of(self.portal, request, user)
        params = request.query_params
        wanted = [*params.getlist("valgt"), params.get("tilfoej", "")]
        chosen = [a for a in _addresses(wanted) if a != canonical(params.get("fjern", "") or "")]
        query = params.get("q", "")[:200]
        return await self._page(request, visitor, head, query, chosen)

    async def _page(self, request: Request, visitor: Visitor, head: CaseHead, query: str, chosen: list[str],
                    error: str | None = None, status: int = 200) -> Response:
        taken = await self._taken(head)
        people = await self._people(head, [a for a in chosen if a not in taken])
        results = [p for p in await self._search(head, query) if p.email not in {c.email for c in people}]
        return self.portal.pages.render(request, visitor, "share.html.j2", status, page_path=request.url.path,
                                        case=head, query=query, results=results, chosen=people, error=error,
                                        closed=head.status == Status.LUKKET.value)

    async def search(self, request: Request) -> Response:
        """The dialog's search, as JSON: [{"email", "name"}], customers of the organisation only."""
        _, user = await self.portal.user_visitor(request)
        head = await case_of(self.portal, request, user)
        found = await self._search(head, request.query_params.get("q", "")[:200])
        return JSONResponse([{"email": p.email, "name": p.name or p.email} for p in found],
                            headers={"Cache-Control": "no-store"})

    async def share(self, request: Request) -> Response:
        visitor, user = await self.portal.user_visitor(request)
        form = await read_form(request, 64 * 1024)
        self.portal.check_csrf(visitor, form)
        head = await case_of(self.portal, request, user)
        _ = translator(visitor.lang)
        emails = _addresses([v for v in form.getlist("valgt") if isinstance(v, str)])
        if not emails:
            return await self._page(request, visitor, head, "", [], _("Vælg mindst én bruger."), 400)
        people = await self._people(head, emails)
        if len(people) != len(emails):
            return await self._page(request, visitor, head, "", [p.email for p in people],
                                    _("Sagen kan kun deles med brugere i din egen organisation."), 400)
        taken = await self._taken(head)
        try:
            for person in people:
                if person.email not in taken:
                    await lifecycle.share(self.portal.desk, head.number, person.email, user.email)
        except lifecycle.Forbidden:
            raise not_found() from None
        except Refused:
            return await self._page(request, visitor, head, "", [], _("En lukket sag kan ikke deles."), 409)
        return RedirectResponse(f"/sager/{head.number}?besked=delt", status_code=303)

    async def _search(self, head: CaseHead, query: str) -> list[Person]:
        if not query.strip() or not head.organisation or head.organisation_id is None:
            return []
        found = await lifecycle.search_users(self.portal.desk, query, head.organisation, SEARCH_LIMIT)
        taken = await self._taken(head)
        return await self._people(head, [f["email"] for f in found if f["email"] not in taken])

    async def _people(self, head: CaseHead, emails: list[str]) -> list[Person]:
        """Customers of the case's organisation among these addresses; no one else, ever."""
        if head.organisation_id is None:
            return []
        return await self.portal.read(portal_cases.people, head.organisation_id, emails)

    async def _taken(self, head: CaseHead) -> set[str]:
        """Those who have the case already: the requester and its parties."""
        parties = await self.portal.read(portal_cases.parties, head.id)
        return {head.requester_email, *(p.email for p in parties)}
