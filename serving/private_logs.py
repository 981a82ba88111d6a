"""The framework's error records without the request's values: a rejected body never reaches the log.

BentoML logs every exception of an endpoint at ERROR with its traceback, a 400 included. A pydantic
``ValidationError``'s text quotes the values it rejected and, for a missing field, the whole object
around it: a shopper's email, phone, street line or IP would land in the service log. The filter
rewrites those records before any handler sees them:

* a validation error (the caller's 400) becomes one WARNING line naming the invalid fields;
* any other exception keeps its traceback's frames (what an operator debugs with) and its type, and
  drops its message, which may quote the request.
"""

from __future__ import annotations

import logging
import traceback

from pydantic import ValidationError

#: Where BentoML's ``log_exception`` writes (``bentoml._internal.server.http_app``'s module logger).
FRAMEWORK_ERROR_LOGGER = "bentoml._internal.server.http_app"


def invalid_fields(exc: ValidationError) -> list[str]:
    """The dotted locations of a validation error's fields (``promotion.code``), never their values."""
    errors = exc.errors(include_url=False, include_context=False, include_input=False)
    return sorted({".".join(str(part) for part in error["loc"]) or "body" for error in errors})


class RedactFrameworkErrors(logging.Filter):
    """Rewrite a framework error record so that no value of the request survives in it."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Always keep the record; strip its exception's text first when it has one."""
        exc = record.exc_info[1] if record.exc_info else None
        if exc is None:
            return True
        head = record.getMessage()
        if isinstance(exc, ValidationError):
            record.msg = "%s: rejected (400), invalid field(s): %s"
            record.args = (head, ", ".join(invalid_fields(exc)))
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        else:
            frames = "".join(traceback.format_tb(exc.__traceback__))
            record.msg = (
                "%s\nTraceback (most recent call last):\n%s%s (message withheld: it may quote the request)"
            )
            record.args = (head, frames, type(exc).__qualname__)
        record.exc_info = None
        record.exc_text = None
        return True


def redact_framework_errors() -> None:
    """Install :class:`RedactFrameworkErrors` on BentoML's error logger once per process."""
    framework = logging.getLogger(FRAMEWORK_ERROR_LOGGER)
    if not any(isinstance(f, RedactFrameworkErrors) for f in framework.filters):
        framework.addFilter(RedactFrameworkErrors())
