"""Mine sager, the case page, Opdater (a comment with a file), Luk and the downloads.

Every handler finds the case through `store.portal_cases.member_case` with the logged-in
user's id: a case of someone else is "no such page" (404), on the page, the download and every
form post alike. The actions are `gateway.lifecycle`'s — the same rules, history and mails as
a comment by mail or an action by the API.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response

from gateway import lifecycle
from gateway.errors import Refused
from gateway.http.portal.context import Portal, Visitor, declared_length, not_found, read_form
from gateway.http.portal.conversation import conversation
from gateway.http.portal.i18n import size, translator, when
from gateway.model import Source, Status
from store import portal_cases
from store.portal import PortalUser
from store.portal_cases import CaseHead, CasePage, CaseRow
from store.transact import ReadConnection

log = logging.getLogger("gateway.portal")

PER_PAGE = 25
FILTERS = {"igangvaerende": "active", "afsluttede": "done", "alle": "all"}  # ?vis= → store filter
FORM_SLACK = 1024 * 1024  # the comment's text and the multipart framing, beside the file


async def case_of(portal: Portal, request: Request, user: PortalUser) -> CaseHead:
    """The case named in the path, if the user is its requester or a party; else 404."""
    number = str(request.path_params.get("number", ""))
    if not lifecycle.valid_number(number):
        raise not_found()
    head = await portal.read(portal_cases.member_case, number, user.id)
    if head is None:
        raise not_found()
    return head


def _my_cases(conn: ReadConnection, user_id: int, which: str, limit: int, offset: int) -> tuple[list[CaseRow], int]:
    return portal_cases.my_cases(conn, user_id, which, limit, offset)


def _member_case_page(conn: ReadConnection, user_id: int, number: str) -> CasePage | None:
    return portal_cases.member_case_page(conn, number, user_id)


class Cases:
    def __init__(self, portal: Portal) -> None:
        self.portal = portal
        self.file_limit = portal.settings.smtp.max_message_size  # "the size limit as for mail"

    # --- Mine sager --------------------------------------------------------------------------------

    async def my_cases(self, request: Request) -> Response:
        shown = request.query_params.get("vis", "igangvaerende")
        shown = shown if shown in FILTERS else "igangvaerende"
        side = request.query_params.get("side", "1")
        page = int(side) if side.isdigit() and 0 < int(side) < 100_000 else 1
        visitor, _, (rows, total) = await self.portal.user_reading(request, partial(
            _my_cases, which=FILTERS[shown], limit=PER_PAGE, offset=(page - 1) * PER_PAGE))
        return self.portal.pages.render(request, visitor, "cases.html.j2", rows=rows, total=total, shown=shown,
                                        page=page, pages=max(1, math.ceil(total / PER_PAGE)))

    # --- the case ---------------------------------------------------------------------------------------

    async def case(self, request: Request) -> Response:
        number = str(request.path_params.get("number", ""))
        if not lifecycle.valid_number(number):
            await self.portal.user_visitor(request)  # log in first, as for any page of /sager
            raise not_found()
        visitor, _, page = await self.portal.user_reading(request, partial(_member_case_page, number=number))
        if page is None:
            raise not_found()
        return await self._case_page(request, visitor, page.head, page=page)

    async def _head(self, request: Request, user: PortalUser) -> CaseHead:
        return await case_of(self.portal, request, user)

    async def _case_page(self, request: Request, visitor: Visitor, head: CaseHead, status: int = 200,
                         error: str | None = None, text: str = "", page: CasePage | None = None) -> Response:
        assert visitor.user is not None
        if page is None:
            page = await self.portal.read(portal_cases.case_page, head)
        closed = head.status == Status.LUKKET.value
        lang = visitor.lang
        talk = conversation(page.comments, head.number, translator(lang), lambda at: when(at, lang),
                            lambda n: size(n, lang))
        return self.portal.pages.render(
            request, visitor, "case.html.j2", status, page_path=f"/sager/{head.number}", page=page, case=head,
            conversation=talk, closed=closed, is_requester=head.requester_id == visitor.user.id, error=error,
            text=text, can_share=not closed and head.organisation_id is not None, file_limit=self.file_limit)

    # --- Opdater: a comment, with a file ----------------------------------------------------------------

    async def comment(self, request: Request) -> Response:
        visitor, user = await self.portal.user_visitor(request)
        _ = translator(visitor.lang)
        length = declared_length(request)
        if length is not None and length > self.file_limit + FORM_SLACK:
            head = await self._head(request, user)
            return await self._case_page(request, visitor, head, 413,
                                         _("Filen er for stor. Højst {size}.", size=size(self.file_limit, visitor.lang)))
        form = await read_form(request, self.file_limit + FORM_SLACK, files=1)
        try:
            self.portal.check_csrf(visitor, form)
            head = await self._head(request, user)
            text = form.get("kommentar")
            text = text if isinstance(text, str) else ""
            upload = form.get("fil")
            files = await self._files(upload)
            problem = self._problem(text, files)
            if problem:
                status, message = problem
                return await self._case_page(request, visitor, head, status,
                                             _(message, size=size(self.file_limit, visitor.lang)), text)
            return await self._comment(request, visitor, user, head, text, files)
        finally:
            await form.close()

    async def _comment(self, request: Request, visitor: Visitor, user: PortalUser, head: CaseHead, text: str,
                       files: list[lifecycle.NewAttachment]) -> Response:
        _ = translator(visitor.lang)
        try:
            await lifecycle.comment(self.portal.desk, head.number, text, user.email, files, source=Source.PORTAL)
        except lifecycle.Forbidden:
            raise not_found() from None  # shared no longer, between the page and the post
        except lifecycle.InvalidInput:
            return await self._case_page(request, visitor, head, 400, _("Sagen kunne ikke opdateres."), text)
        except Refused:  # closed meanwhile: the guide's words, and a new case offered
            head = await self._head(request, user)
            return await self._case_page(request, visitor, head, 409,
                                         _("Sagen er lukket. Herefter kan den ikke genåbnes."), text)
        return RedirectResponse(f"/sager/{head.number}?besked=kommentar", status_code=303)

    @staticmethod
    async def _files(upload: Any) -> list[lifecycle.NewAttachment]:
        if not isinstance(upload, UploadFile) or not upload.filename:
            return []
        data = await upload.read()
        return [lifecycle.NewAttachment(upload.filename, upload.content_type or "application/octet-stream", data)]

    def _problem(self, text: str, files: list[lifecycle.NewAttachment]) -> tuple[int, str] | None:
        """What the form's own checks refuse (the status and the text), before the lifecycle's."""
        if not text.strip() and not files:
            return 400, "Skriv en kommentar, eller vedhæft en fil."
        if len(text) > lifecycle.MAX_TEXT:
            return 400, "Kommentaren er for lang."
        if any(len(f.data) > self.file_limit for f in files):
            return 413, "Filen er for stor. Højst {size}."
        return None

    # --- Luk ------------------------------------------------------------------------------------------------

    async def close_form(self, request: Request) -> Response:
        visitor, user = await self.portal.user_visitor(request)
        head = await self._own_case(request, user)
        if head.status == Status.LUKKET.value:
            return RedirectResponse(f"/sager/{head.number}", status_code=303)
        return self.portal.pages.render(request, visitor, "close.html.j2", case=head)

    async def close(self, request: Request) -> Response:
        visitor, user = await self.portal.user_visitor(request)
        form = await read_form(request, 64 * 1024)
        self.portal.check_csrf(visitor, form)
        head = await self._own_case(request, user)
        try:
            await lifecycle.close(self.portal.desk, head.number, user.email)
        except lifecycle.Forbidden:
            raise not_found() from None
        except Refused:
            pass  # closed already: the page says so
        return RedirectResponse(f"/sager/{head.number}?besked=lukket", status_code=303)

    async def _own_case(self, request: Request, user: PortalUser) -> CaseHead:
        """Luk is the requester's alone: for a party the page does not exist."""
        head = await self._head(request, user)
        if head.requester_id != user.id:
            raise not_found()
        return head

    # --- downloads ------------------------------------------------------------------------------------------

    async def download(self, request: Request) -> Response:
        _, user = await self.portal.user_visitor(request)
        head = await self._head(request, user)
        file_id = str(request.path_params.get("file", ""))
        found = await self.portal.read(portal_cases.download, head.id, int(file_id)) if file_id.isdigit() else None
        if found is None or not self.portal.deps.blobs.exists(found.sha256):
            raise not_found()
        # Always a download, never shown by the browser: the bytes are the sender's, not ours.
        return FileResponse(self.portal.deps.blobs.path(found.sha256), media_type="application/octet-stream",
                            filename=lifecycle.safe_name(found.name), content_disposition_type="attachment",
                            headers={"Content-Security-Policy": "sandbox; default-src 'none'",
                                     "Cache-Control": "private, no-store"})
