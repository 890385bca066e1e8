"""Blueprint: the owner's API for site knowledge, /api/knowledge/documents.

The site owner (`CHATAPP_ADMIN_TOKEN`) or the WordPress plugin (a short-lived
JWT for the `chatapp-knowledge` audience) pushes, removes and lists the
documents answers draw on. Rate-limited per client; bodies up to 2 MiB.
"""

from __future__ import annotations

from flask import Blueprint
from flask import Response
from flask import jsonify
from flask import request

from chatapp.errors import InvalidInput
from chatapp.errors import NotFound
from chatapp.errors import OverCapacity
from chatapp.extensions import state
from chatapp.knowledge.documents import describe
from chatapp.knowledge.documents import document_from
from chatapp.knowledge.documents import is_web_url
from chatapp.knowledge.documents import store
from chatapp.knowledge.index import Index
from chatapp.knowledge.index import IndexUnavailable
from chatapp.knowledge.index import KnowledgeError
from chatapp.web import errors
from chatapp.web import parse
from chatapp.web.errors import api_error_response
from chatapp.web.limiter import owner_api_limit
from chatapp.web.owner import KNOWLEDGE_AUDIENCE
from chatapp.web.owner import require_owner

bp = Blueprint("knowledge", __name__, url_prefix="/api/knowledge")
errors.register(bp)

DOCUMENTS_PATH = "/api/knowledge/documents"
MAX_DOCUMENT_BYTES = 2 * 1024 * 1024
INDEX_RETRY_AFTER = 5


@bp.errorhandler(IndexUnavailable)
def index_unavailable(exc: IndexUnavailable) -> Response:
    """The index does not answer (a locked file, Postgres away): come back soon."""
    return api_error_response(
        OverCapacity(
            "The knowledge index is briefly unavailable; try again in a few seconds.",
            retry_after=INDEX_RETRY_AFTER,
        )
    )


def _index() -> Index:
    """Return the worker's index after checking the owner; 404 with knowledge off."""
    knowledge = state().knowledge
    if knowledge is None:
        raise NotFound("Site knowledge is off.")
    require_owner(wp_audience=KNOWLEDGE_AUDIENCE)
    return knowledge.index


@bp.put("/documents")
@owner_api_limit
def put_document() -> Response:
    """Add or replace the document at `url`; answer how many passages it made."""
    index = _index()
    request.max_content_length = max(
        MAX_DOCUMENT_BYTES, request.max_content_length or 0
    )
    if not request.is_json:
        raise InvalidInput("Send the document as JSON.")
    try:
        document = document_from(parse.fields())
        passages = store(index, document)
    except KnowledgeError as exc:  # InvalidDocument too
        if isinstance(exc, IndexUnavailable):
            raise
        raise InvalidInput(str(exc)) from exc
    response = jsonify({"url": document.url, "passages": passages})
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.delete("/documents")
@owner_api_limit
def delete_document() -> Response:
    """Remove the document at `?url=`; 404 when the index has none."""
    index = _index()
    url = request.args.get("url", "")
    if not is_web_url(url):
        raise InvalidInput("'url' must be an absolute http(s) URL.")
    if not index.remove(url.split("#", 1)[0]):
        raise NotFound("No document at that URL.")
    return Response(status=204, headers={"Cache-Control": "no-store"})


@bp.get("/documents")
@owner_api_limit
def list_documents() -> Response:
    """List every indexed document: url, title, passages, modified."""
    documents = [describe(info) for info in _index().documents()]
    response = jsonify({"documents": documents})
    response.headers["Cache-Control"] = "no-store"
    return response
