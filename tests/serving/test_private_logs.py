"""Framework error records lose the request's values before any handler writes them."""

from __future__ import annotations

import logging
import sys

import pytest
from pydantic import BaseModel, ValidationError

from serving.private_logs import FRAMEWORK_ERROR_LOGGER, RedactFrameworkErrors, redact_framework_errors

EMAIL = "canary.shopper+x@example.com"


class Body(BaseModel):
    request_id: str
    ip: int


def _record(exc: BaseException) -> logging.LogRecord:
    try:
        raise exc
    except BaseException:
        return logging.LogRecord(FRAMEWORK_ERROR_LOGGER, logging.ERROR, __file__, 1,
                                 "Exception on %s [%s]", ("/score", "POST"), sys.exc_info())


def _rendered(record: logging.LogRecord) -> str:
    return logging.Formatter("%(levelname)s %(message)s").format(record)


def test_a_validation_error_becomes_a_warning_naming_the_fields_and_no_value() -> None:
    with pytest.raises(ValidationError) as caught:
        Body.model_validate({"email": EMAIL, "ip": "203.0.113.9"})
    record = _record(caught.value)
    assert "203.0.113.9" in _rendered(_record(caught.value))  # what BentoML would have written

    assert RedactFrameworkErrors().filter(record) is True
    text = _rendered(record)
    assert text == "WARNING Exception on /score [POST]: rejected (400), invalid field(s): ip, request_id"
    assert EMAIL not in text and "203.0.113.9" not in text


def test_another_error_keeps_its_frames_and_type_but_not_its_message() -> None:
    record = _record(RuntimeError(f"could not score {EMAIL}"))
    assert RedactFrameworkErrors().filter(record) is True
    text = _rendered(record)
    assert text.startswith("ERROR Exception on /score [POST]\nTraceback (most recent call last):")
    assert "in _record" in text and "RuntimeError (message withheld" in text
    assert EMAIL not in text


def test_it_is_installed_once_on_the_framework_logger() -> None:
    framework = logging.getLogger(FRAMEWORK_ERROR_LOGGER)
    redact_framework_errors()
    redact_framework_errors()
    assert sum(isinstance(f, RedactFrameworkErrors) for f in framework.filters) == 1
