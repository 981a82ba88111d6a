"""The second floor of ``benchmarks/load.py``: promoguard's own service, with scoring answering a constant.

Started with ``bentoml serve benchmarks.framework_service:PromoGuard``. It is the real service
(:mod:`serving.service`) with one change: :meth:`scoring.scorer.Scorer.score` answers the API document's
example under the request's id and does nothing else. Everything in front of scoring runs as in
production: the request guard (size, content type, key, rate limit, the 400 rewrite), BentoML's
validation of the full ``ScoreRequest``, the service's metrics and the response. Its distance to the
bare floor (:mod:`benchmarks.bare_service`) is what the service adds around scoring; its distance to
promoguard is what scoring costs (identity, graph, feature and velocity state, model, rules, log).

The service still loads the model and opens its stores at start, so it needs a built world like
promoguard's; a request never touches them.
"""

from __future__ import annotations

from scoring.schemas import ScoreRequest, ScoreResponse
from scoring.scorer import Scorer
from serving.openapi import RESPONSE_EXAMPLE
from serving.service import PromoGuard

__all__ = ["PromoGuard"]

#: The constant answer; each request only gets its own id in it.
ANSWER = ScoreResponse.model_validate(RESPONSE_EXAMPLE)


def constant_score(self: Scorer, req: ScoreRequest) -> ScoreResponse:
    """The example answer under ``req``'s request id: no state is read or written."""
    return ANSWER.model_copy(update={"request_id": req.request_id})


# Replaced on the class, in the worker that imports this module: the service builds its Scorer later.
Scorer.score = constant_score  # type: ignore[method-assign]
