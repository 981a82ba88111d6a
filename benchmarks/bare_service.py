"""The floor of ``benchmarks/load.py``: a BentoML /score that parses the body and answers a constant.

Started with ``bentoml serve benchmarks.bare_service:Bare``. The real service's BentoML settings
(:data:`serving.service.SERVER_CONFIG`: workers per CPU, 8 threads, 5 s traffic timeout; tracing and
the access log following ``PROMOGUARD_TRACING`` / ``PROMOGUARD_ACCESS_LOG``), so that the gap to
promoguard is promoguard's own work. The body is checked only as a JSON object with a request id; the
answer has the shape of a real one (:class:`scoring.schemas.ScoreResponse`, the API document's example).
"""

from __future__ import annotations

from typing import Any

import bentoml
from pydantic import BaseModel, ConfigDict

from scoring.schemas import ScoreResponse
from serving.openapi import RESPONSE_EXAMPLE
from serving.service import SERVER_CONFIG, with_framework_settings

#: The constant answer; each request only gets its own id in it.
ANSWER = ScoreResponse.model_validate(RESPONSE_EXAMPLE)


class LooseRequest(BaseModel):
    """Any /score body: a JSON object with a request id, every other field allowed."""

    model_config = ConfigDict(extra="allow")
    request_id: str


@bentoml.service(name="bare", **SERVER_CONFIG)
class Bare:
    """The cheapest /score BentoML serves with promoguard's server settings: parse, answer, nothing else."""

    @bentoml.api(route="/score", input_spec=LooseRequest, output_spec=ScoreResponse)
    def score(self, **body: Any) -> ScoreResponse:
        """Answer every request with the example answer under its own request id."""
        return ANSWER.model_copy(update={"request_id": str(body["request_id"])})


with_framework_settings(Bare)
