"""The real service over real HTTP (``bentoml serve`` in a subprocess), plus its guard's parts."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from config.settings import InvalidSettings, Settings
from features.ipintel import CombinedIpIntel, HttpIpIntel
from promoguard.cli import app as cli_app
from promoguard.demo import free_port
from scoring.artifact import LoadedModel
from scoring.policy import band_for, decide
from scoring.reasons import REASON_CODES
from scoring.rules import default_rules, evaluate_rules
from scoring.scorer import build_policy
from serving.openapi import REQUEST_EXAMPLE, RESPONSE_EXAMPLE, package_version
from serving.service import RequestGuard, TokenBucket, build_scorer, contract_400, key_matches, load_model

API_KEY = "test-key-123"
REPO = Path(__file__).resolve().parents[2]
RAW_EMAIL = "jane.doe+promo@example.com"
RAW_IP = "203.0.113.77"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, artifact_dir: Path) -> Iterator[tuple[str, Path]]:
    """Start the service on a free port with tmp dirs; yield its URL and log file."""
    root = tmp_path_factory.mktemp("svc")
    shutil.copytree(artifact_dir, root / "model")
    port = free_port()
    log = root / "server.log"
    env = {
        **os.environ,
        "PROMOGUARD_ROOT": str(root),
        "PROMOGUARD_MODEL_DIR": str(root / "model"),
        "PROMOGUARD_API_KEYS": f"other-key,{API_KEY}",
        "PROMOGUARD_REQUIRE_API_KEY": "true",
        "PROMOGUARD_MAX_BODY_BYTES": "8192",
        "BENTOML_DO_NOT_TRACK": "true",
        "BENTOML_HOME": str(root / "bentoml"),
    }
    bentoml_cli = Path(sys.executable).parent / "bentoml"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(bentoml_cli), "serve", "serving.service:PromoGuard", "--port", str(port),
             "--host", "127.0.0.1"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"service exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"service not ready in 90 s:\n{log.read_text()[-3000:]}")
            time.sleep(0.3)
        yield url, log
    finally:
        # The service runs in its own session: stop exactly that process group.
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _body(request_id: str, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": request_id,
        "timestamp": "2026-11-21T12:00:00Z",
        "promotion": {"code": "WELCOME10", "type": "welcome", "per_customer_limit": 1},
        "account": {"account_id": "acct-1", "created_at": "2026-11-20T09:00:00Z"},
        "email": RAW_EMAIL,
        "phone": "+1 415 555 0134",
        "shipping_address": {"line1": "742 Evergreen Terrace", "city": "Springfield", "postal_code": "97403",
                             "country": "US"},
        "device": {"device_id": "3f0c7a52-9b1e-4d5e-8c11-2a9e5f6b7c80"},
        "payment": {"fingerprint": "fp_4242"},
        "ip": RAW_IP,
        "cart": {"total": 42.5, "currency": "USD", "items": [{"sku": "A1", "quantity": 2}]},
    }
    body.update(extra)
    return body


def _post(url: str, path: str, body: dict[str, Any], key: str | None = API_KEY) -> httpx.Response:
    headers = {"X-API-Key": key} if key else {}
    return httpx.post(f"{url}{path}", json=body, headers=headers, timeout=10)


def _decide_and_redeem(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """Score ``body``; report it redeemed unless refused, as checkout would; return the answer."""
    resp = _post(url, "/score", body)
    assert resp.status_code == 200, resp.text
    answer: dict[str, Any] = resp.json()
    if answer["decision"] != "refuse":
        redeemed = {"request_id": body["request_id"], "outcome": "redeemed"}
        assert _post(url, "/outcome", redeemed).status_code == 200
    return answer


@pytest.mark.slow
def test_score_over_http_follows_the_contract(server: tuple[str, Path]) -> None:
    url, _ = server
    resp = _post(url, "/score", _body("e2e-1"))
    assert resp.status_code == 200, resp.text
    data = resp.json()
    assert set(data) == {"request_id", "score", "band", "decision", "signals", "model_version", "degraded",
                         "fallback", "latency_ms"}
    assert data["request_id"] == "e2e-1"
    assert isinstance(data["score"], int) and 0 <= data["score"] <= 100
    assert data["band"] in {"clean", "low", "medium", "high"}
    assert data["decision"] in {"allow", "watch", "verify", "refuse"}
    # No Feast store exists in this root, so the answer must say it came from the rules.
    assert data["degraded"] is True and data["fallback"] == "rules"
    for sig in data["signals"]:
        assert set(sig) == {"name", "code", "description", "points", "source"}
        assert sig["source"] in {"model", "rule", "identity"}
        assert sig["code"] in REASON_CODES
    assert sum(s["points"] for s in data["signals"]) == data["score"]


@pytest.mark.slow
def test_retries_are_idempotent_and_a_changed_body_is_a_409(server: tuple[str, Path]) -> None:
    url, _ = server
    first = _post(url, "/score", _body("e2e-2")).json()
    assert _post(url, "/score", _body("e2e-2")).json() == first
    changed = _post(url, "/score", _body("e2e-2", email="someone.else@example.com"))
    assert changed.status_code == 409
    assert "e2e-2" in changed.json()["error"]


@pytest.mark.slow
def test_unknown_field_is_rejected_naming_it(server: tuple[str, Path]) -> None:
    url, _ = server
    resp = _post(url, "/score", _body("e2e-3", decision="allow"))
    assert resp.status_code == 400
    assert resp.json() == {"error": "invalid request body: 1 field",
                           "errors": [{"field": "decision",
                                       "message": "unknown field: not part of the contract"}]}


def test_a_rejected_body_leaves_its_field_names_in_the_log_and_none_of_its_values(
    server: tuple[str, Path],
) -> None:
    url, log = server
    email, phone, street, ip = "log.canary@example.org", "+1 415 555 0199", "9911 Canary Road", "73.77.31.999"
    missing_id = {k: v for k, v in _body("unused", email=email, phone=phone).items() if k != "request_id"}
    assert _post(url, "/score", missing_id).status_code == 400
    bad_ip = _body("e2e-log-1", ip=ip, shipping_address={"line1": street, "postal_code": "97403"})
    assert _post(url, "/score", bad_ip).status_code == 400
    deadline = time.monotonic() + 5
    while "invalid field(s): ip" not in log.read_text(errors="replace") and time.monotonic() < deadline:
        time.sleep(0.1)
    text = log.read_text(errors="replace")
    assert "rejected (400), invalid field(s): request_id" in text
    assert "rejected (400), invalid field(s): ip" in text
    for raw in (email, phone, street, ip):
        assert raw not in text, raw


@pytest.mark.slow
def test_api_key_is_required(server: tuple[str, Path]) -> None:
    url, _ = server
    assert _post(url, "/score", _body("e2e-4"), key=None).status_code == 401
    assert _post(url, "/score", _body("e2e-4"), key="wrong").status_code == 401
    assert httpx.get(f"{url}/livez", timeout=5).status_code == 200


@pytest.mark.slow
def test_oversized_body_is_refused(server: tuple[str, Path]) -> None:
    url, _ = server
    resp = _post(url, "/score", _body("e2e-5", email="x" * 9000 + "@example.com"))
    assert resp.status_code == 413


@pytest.mark.slow
def test_outcome_feedback_metrics_and_openapi(server: tuple[str, Path]) -> None:
    url, log = server
    assert _post(url, "/score", _body("e2e-6")).status_code == 200
    outcome = _post(url, "/outcome", {"request_id": "e2e-6", "outcome": "abandoned"})
    assert outcome.status_code == 200 and outcome.json()["request_id"] == "e2e-6"
    feedback = _post(url, "/feedback", {"request_id": "e2e-6", "label": "abuse", "source": "manual_review"})
    assert feedback.status_code == 200 and feedback.json()["stored"] is True
    assert _post(url, "/feedback", {"request_id": "never-scored", "label": "legit"}).status_code == 404
    metrics = httpx.get(f"{url}/metrics", timeout=5).text
    assert "promoguard_score_requests_total" in metrics
    assert "promoguard_score_latency_seconds_bucket" in metrics
    spec = httpx.get(f"{url}/docs.json", timeout=5).json()
    assert {"/score", "/outcome", "/feedback"} <= set(spec["paths"])
    assert "requestBody" in spec["paths"]["/score"]["post"]
    text = log.read_text(errors="replace")
    assert RAW_EMAIL not in text and RAW_IP not in text


def test_readiness_answers_with_the_state_of_each_dependency_without_a_key(server: tuple[str, Path]) -> None:
    url, _ = server
    ready = httpx.get(f"{url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.headers["content-type"] == "application/json"
    body = ready.json()
    assert body["ready"] is True and body["degraded"] is False
    # This service has no feature store to read (no world was built), so no online-store breaker.
    assert set(body["breakers"]) == {"velocity", "identity_graph", "model"}
    assert {b["state"] for b in body["breakers"].values()} == {"closed"}
    # The same states as the detail route, which stays for callers that already read it.
    assert httpx.get(f"{url}/health/detail", timeout=5).json()["breakers"].keys() == body["breakers"].keys()
    # Both are in the OpenAPI document, with the fields they answer.
    paths = httpx.get(f"{url}/docs.json", timeout=10).json()["paths"]
    schema = paths["/readyz"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert set(schema["properties"]) == set(body)
    breaker = schema["properties"]["breakers"]["additionalProperties"]
    assert set(breaker["properties"]) == set(body["breakers"]["velocity"])
    assert "/health/detail" in paths


@pytest.mark.slow
@pytest.mark.parametrize(("content", "media"), [
    ({"data": {"request_id": "x"}}, "application/x-www-form-urlencoded"),
    ({"files": {"f": ("a.txt", b"hello")}}, "multipart/form-data"),
    ({"content": b"hello", "headers": {"Content-Type": "text/plain"}}, "text/plain"),
])
def test_a_body_that_is_not_json_is_a_415_naming_json(
    server: tuple[str, Path], content: dict[str, Any], media: str
) -> None:
    url, _ = server
    headers = {"X-API-Key": API_KEY, **content.pop("headers", {})}
    resp = httpx.post(f"{url}/score", headers=headers, timeout=10, **content)
    assert resp.status_code == 415, resp.text
    assert resp.json() == {"error": f"unsupported content type {media}: send application/json"}
    assert resp.headers["accept"] == "application/json"


@pytest.mark.slow
def test_malformed_caller_fields_are_400s_and_a_malformed_email_becomes_a_signal(
    server: tuple[str, Path],
) -> None:
    url, _ = server
    bad = _post(url, "/score", _body("bad-1", ip="203.0.113", cart={"currency": "dollars"},
                                     device={"device_id": "d-123456", "local_ip": "router"}))
    assert bad.status_code == 400
    assert {e["field"] for e in bad.json()["errors"]} == {"ip", "cart.currency", "device.local_ip"}
    typed = _post(url, "/score", _body("bad-2", email="jane.doe@", phone="12"))
    assert typed.status_code == 200, typed.text
    codes = {s["code"] for s in typed.json()["signals"]}
    assert {"EMAIL_INVALID", "PHONE_INVALID"} <= codes


def _policy(artifact_dir: Path) -> Any:
    model = LoadedModel.from_dir(artifact_dir)
    return build_policy(model.bands, model.thresholds)


@pytest.mark.slow
def test_answers_over_http_agree_with_their_decision(server: tuple[str, Path], artifact_dir: Path) -> None:
    url, _ = server
    policy = _policy(artifact_dir)
    bodies = [
        _body("inv-1"), _body("inv-2", device={"device_id": "0000"}),
        _body("inv-3", promotion={"code": "VIP", "type": "wholesale", "eligible_segment": "wholesale"}),
        _body("inv-4", promotion={"code": "ONCE-X", "type": "sitewide", "single_use": True}),
        _body("inv-5", promotion={"code": "ONCE-X", "type": "sitewide", "single_use": True},
              device={"device_id": "9d8c7b6a-0000-4000-8000-000000000001"}),
    ]
    for body in bodies:
        answer = _post(url, "/score", body).json()
        ptype = body["promotion"]["type"]
        assert answer["decision"] == decide(answer["score"], ptype, policy.thresholds), answer
        assert answer["band"] == band_for(answer["score"], policy.bands)
        assert answer["decision"] != "refuse" or answer["band"] == "high"
        assert answer["decision"] != "verify" or answer["band"] in ("medium", "high")
        assert sum(s["points"] for s in answer["signals"]) == answer["score"]
        rest = [s["points"] for s in answer["signals"][1:]]
        assert rest == sorted(rest, reverse=True)
    spent = _post(url, "/score", bodies[-1]).json()
    assert spent["decision"] == "refuse" and spent["signals"][0]["code"] == "SINGLE_USE_SPENT"


@pytest.mark.slow
def test_the_decision_record_is_the_frozen_answer_with_a_counterfactual_that_changes_it(
    server: tuple[str, Path],
) -> None:
    url, _ = server
    promotion = {"code": "REC-ONLY", "type": "welcome", "per_customer_limit": 1}
    # A shopper of their own: the module's default shopper has had a welcome offer already.
    email = "rec.only@example.net"
    newcomer = _body("rec-1", promotion=promotion, device={"device_id": "0000"}, email=email,
                     account={"account_id": "acct-rec"}, phone="+1 415 555 0177",
                     payment={"fingerprint": "fp_rec_1"},
                     shipping_address={"line1": "88 Birch Ln", "postal_code": "97401", "country": "US"})
    answer = _post(url, "/score", newcomer).json()
    assert answer["decision"] == "verify", answer
    headers = {"X-API-Key": API_KEY}
    assert httpx.get(f"{url}/decisions/rec-1", timeout=10).status_code == 401
    assert httpx.get(f"{url}/decisions/never-scored", headers=headers, timeout=10).status_code == 404
    _post(url, "/feedback", {"request_id": "rec-1", "label": "legit", "source": "manual_review"})
    resp = httpx.get(f"{url}/decisions/rec-1", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    record = resp.json()
    assert record["answer"] == answer
    assert record["rules_version"] == default_rules().label and record["deciding_rule"] == "device_missing"
    assert record["feedback"][0]["label"] == "legit" and record["timings_ms"]["total"] == answer["latency_ms"]
    assert email not in resp.text and RAW_IP not in resp.text
    cf = record["counterfactual"]
    assert cf["found"] and cf["explanation"].endswith("if a valid device id had been sent")
    # Re-scoring the recorded inputs with the counterfactual's inputs neutralised really changes the decision
    # (this service answers from the rules: no Feast store in its root).
    inputs = {**record["features"], **record["rule_inputs"], **cf["neutralised"]}
    outcome = evaluate_rules(inputs, default_rules(), skip_codes=set(cf["rules_left_out"]))
    thresholds = {"default": record["policy"]["thresholds"]}
    decision = decide(outcome.score, "welcome", thresholds)
    decision = outcome.hard_decision if outcome.hard_decision == "refuse" else decision
    assert decision == cf["decision"] != "verify"


@pytest.mark.slow
def test_shared_lan_strangers_keep_a_welcome_offer_a_family_member_is_watched_a_cycler_refused(
    server: tuple[str, Path],
) -> None:
    # This service answers from the rules (no model in its root): the decision path's caps and rules
    # over HTTP, on the identity graph and the velocity store the service really runs.
    url, _ = server
    promotion = {"code": "WELCOME-LAN", "type": "welcome", "per_customer_limit": 1}

    def shopper(n: int, **extra: Any) -> dict[str, Any]:
        body = _body(f"lan-{n}", promotion=promotion, account={"account_id": f"acct-lan-{n}"},
                     email=f"person.{n}@example.com", phone=f"+1 415 555 01{n:02d}",
                     shipping_address={"line1": f"{100 + n} Elm St", "postal_code": "97403",
                                       "country": "US"},
                     device={"device_id": f"3f0c7a52-9b1e-4d5e-8c11-2a9e5f6b7c{n:02d}",
                             "local_ip": "192.168.1.10"},
                     payment={"fingerprint": f"fp_lan_{n}"}, ip=f"73.{n}.20.30")
        body.update(extra)
        return body

    def decide(body: dict[str, Any]) -> dict[str, Any]:
        return _decide_and_redeem(url, body)

    # Two strangers in two towns behind the same private router address, nothing else in common.
    first, second = decide(shopper(1)), decide(shopper(2))
    assert {first["decision"], second["decision"]} <= {"allow", "watch"}, (first, second)
    # A family member at the first one's address, with their own device, card, phone and email.
    family = decide(shopper(3, shipping_address=shopper(1)["shipping_address"], ip=shopper(1)["ip"]))
    assert family["decision"] in ("allow", "watch"), family
    assert "EARLIER_REDEEMER_ONE_SIGNAL" in [s["code"] for s in family["signals"]], family
    # The first one again under a fresh account and email, keeping device and card: refused.
    cycler = decide(shopper(4, device=shopper(1)["device"], payment=shopper(1)["payment"]))
    assert cycler["decision"] == "refuse", cycler
    assert cycler["signals"][0]["code"] == "CUSTOMER_CAP_REACHED", cycler


def test_neighbours_in_other_flats_keep_a_household_sample_and_a_referral_one_flat_spelled_anew_does_not(
    server: tuple[str, Path],
) -> None:
    url, _ = server
    sample = {"code": "FLATSAMPLE", "type": "free_sample", "per_customer_limit": 1}

    def resident(n: int, line1: str, line2: str | None = None, **extra: Any) -> dict[str, Any]:
        body = _body(f"flat-{n}", promotion=sample, account={"account_id": f"acct-flat-{n}"},
                     email=f"resident.{n}@example.com", phone=f"+1 503 555 02{n:02d}",
                     shipping_address={"line1": line1, "line2": line2, "postal_code": "97205",
                                       "country": "US"},
                     device={"device_id": f"7a1d2c3b-0e4f-4a5b-9c6d-1e2f3a4b5c{n:02d}"},
                     payment={"fingerprint": f"fp_flat_{n}"}, ip=f"98.{n}.40.50")
        body.update(extra)
        return body

    def decide(body: dict[str, Any]) -> dict[str, Any]:
        return _decide_and_redeem(url, body)

    first = decide(resident(1, "410 Alder Street Apt 4B"))
    assert first["decision"] in ("allow", "watch"), first
    # A neighbour two floors up: the same building, another door, nothing else in common.
    neighbour = decide(resident(2, "410 Alder St", "Apt 5C"))
    assert neighbour["decision"] in ("allow", "watch"), neighbour
    assert "CUSTOMER_CAP_REACHED" not in [s["code"] for s in neighbour["signals"]], neighbour
    # Someone else at the first door, written another way: the household has had its sample.
    same_door = decide(resident(3, "410 alder st #4b"))
    assert same_door["decision"] == "refuse", same_door
    assert same_door["signals"][0]["code"] == "CUSTOMER_CAP_REACHED", same_door

    # The first resident refers the neighbour: a friend in the building, not a referral to oneself.
    referral = {"code": "REF-FLAT-1", "type": "referral", "per_customer_limit": 1,
                "referrer_account_id": "acct-flat-1"}
    friend = decide(resident(4, "410 Alder St Apt 7F", promotion=referral))
    assert "REFERRAL_SELF_REDEMPTION" not in [s["code"] for s in friend["signals"]], friend
    assert friend["decision"] != "refuse", friend


@pytest.mark.slow
def test_the_identity_view_needs_a_key_and_names_the_person_an_attempt_resolved_to(
    server: tuple[str, Path],
) -> None:
    url, _ = server
    promotion = {"code": "ID-VIEW", "type": "welcome", "per_customer_limit": 1}
    _post(url, "/score", _body("id-1", promotion=promotion))
    _post(url, "/score", _body("id-2", promotion=promotion, account={"account_id": "acct-id-2"},
                               email="other.person@example.com"))
    headers = {"X-API-Key": API_KEY}
    assert httpx.get(f"{url}/identity/id-2", timeout=10).status_code == 401
    assert httpx.get(f"{url}/identity/never-scored", headers=headers, timeout=10).status_code == 404
    resp = httpx.get(f"{url}/identity/id-2", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    view = resp.json()
    first = httpx.get(f"{url}/identity/id-1", headers=headers, timeout=10).json()
    # Same device, card, phone and address under a new account and email: the first attempt's person.
    assert view["person_id"] == first["person_id"]
    assert "device" in view["evidence"] and view["person"]["accounts"] == 2
    assert RAW_EMAIL not in resp.text and RAW_IP not in resp.text


def _until(check: Any, seconds: float = 20.0) -> Any:
    """Poll ``check()`` until it returns something truthy; fail after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not picked up within {seconds:.0f} s")
        time.sleep(0.25)


@pytest.mark.slow
def test_a_campaign_paused_from_the_command_line_is_refused_over_http_within_seconds(
    server: tuple[str, Path],
) -> None:
    url, log = server
    code, sent = "FLASH-PAUSE", iter(range(1000))
    promotion = {"code": code, "type": "sitewide"}

    def decision() -> dict[str, Any]:
        resp = _post(url, "/score", _body(f"pause-{next(sent)}", promotion=promotion))
        assert resp.status_code == 200, resp.text
        answer: dict[str, Any] = resp.json()
        return answer

    assert decision()["decision"] != "refuse"
    root = log.parent
    pause = ["campaign", "pause", "flash-pause", "--reason", "leaked", "--by", "ana", "--root", str(root)]
    result = CliRunner().invoke(cli_app, pause, env={"PROMOGUARD_STATE_URL": ""})
    assert result.exit_code == 0, result.output
    paused = _until(lambda: (a := decision())["decision"] == "refuse" and a)
    assert paused["signals"][0]["code"] == "CAMPAIGN_PAUSED", paused
    assert "leaked" in paused["signals"][0]["description"] and paused["band"] == "high"
    result = CliRunner().invoke(cli_app, ["campaign", "resume", code, "--root", str(root)],
                                env={"PROMOGUARD_STATE_URL": ""})
    assert result.exit_code == 0, result.output
    _until(lambda: decision()["decision"] != "refuse")


@pytest.mark.slow
def test_deny_list_entries_added_over_http_refuse_with_their_reason_and_keep_no_raw_identity(
    server: tuple[str, Path],
) -> None:
    url, log = server
    email, sent = "Deny.Me@example.org", iter(range(1000))
    promotion = {"code": "LISTS-HTTP", "type": "sitewide"}

    def decision() -> dict[str, Any]:
        resp = _post(url, "/score", _body(f"list-{next(sent)}", promotion=promotion, email=email))
        assert resp.status_code == 200, resp.text
        answer: dict[str, Any] = resp.json()
        return answer

    entry = {"kind": "email", "value": "deny.me@EXAMPLE.org", "reason": "reseller ring", "expires_in_days": 7}
    assert _post(url, "/lists/deny", entry, key=None).status_code == 401
    bad = _post(url, "/lists/deny", {**entry, "kind": "shoe"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "kind", bad.text
    added = _post(url, "/lists/deny", entry)
    assert added.status_code == 201, added.text
    key = added.json()["key"]
    assert "example" not in added.text.lower() and added.json()["expires_at"] is not None
    refused = _until(lambda: (a := decision())["decision"] == "refuse" and a)
    assert refused["signals"][0]["code"] == "DENY_LISTED"
    assert refused["signals"][0]["description"] == "the email is on the deny list: reseller ring"
    shown = httpx.get(f"{url}/lists", headers={"X-API-Key": API_KEY}, timeout=10)
    assert shown.status_code == 200 and [e["key"] for e in shown.json()["entries"]] == [key]
    gone = httpx.delete(f"{url}/lists/deny/email/{key}", headers={"X-API-Key": API_KEY}, timeout=10)
    assert gone.status_code == 200, gone.text
    _until(lambda: decision()["decision"] != "refuse")
    stored = b"".join(p.read_bytes() for p in (log.parent / "data" / "serving").glob("controls.db*"))
    assert b"deny.me" not in stored.lower() and b"api-key:" in stored


@pytest.mark.slow
def test_the_openapi_document_is_a_contract_a_checkout_engineer_can_read(server: tuple[str, Path]) -> None:
    url, _ = server
    spec = httpx.get(f"{url}/docs.json", timeout=10).json()
    assert spec["info"]["title"] == "promoguard scoring API"
    assert spec["info"]["version"] == package_version() != "None"
    assert spec["components"]["securitySchemes"]["ApiKeyAuth"] == {
        "type": "apiKey", "in": "header", "name": "X-API-Key",
        "description": "One of the keys in PROMOGUARD_API_KEYS."}
    score = spec["paths"]["/score"]["post"]
    assert score["security"] == [{"ApiKeyAuth": []}]
    assert {"200", "400", "401", "409", "411", "413", "415", "429"} <= set(score["responses"])
    error = score["responses"]["400"]["content"]["application/json"]
    assert error["schema"] == {"$ref": "#/components/schemas/ErrorResponse"}
    assert error["example"]["errors"][0] == {"field": "promotion.code", "message": "required"}
    assert score["requestBody"]["content"]["application/json"]["example"] == REQUEST_EXAMPLE
    assert score["responses"]["200"]["content"]["application/json"]["example"] == RESPONSE_EXAMPLE
    assert "Retry-After" in score["responses"]["429"]["headers"]
    schemas = spec["components"]["schemas"]
    assert schemas["Signal"]["properties"]["code"]["enum"] == list(REASON_CODES)
    for name in ("Promotion", "Device", "Cart", "Signal"):
        for field, prop in schemas[name]["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
    decisions = spec["paths"]["/decisions/{request_id}"]["get"]
    assert decisions["security"] == [{"ApiKeyAuth": []}]
    assert {"200", "401", "404"} <= set(decisions["responses"])
    identity = spec["paths"]["/identity/{request_id}"]["get"]
    assert identity["security"] == [{"ApiKeyAuth": []}]
    assert {"200", "401", "404", "503"} <= set(identity["responses"])
    assert "DecisionRecord" in schemas and "ErrorResponse" in schemas and "IdentityResponse" in schemas


def test_examples_of_the_openapi_document_follow_the_contract() -> None:
    from scoring.schemas import ScoreRequest, ScoreResponse

    assert ScoreRequest.model_validate(REQUEST_EXAMPLE).request_id == "try-me-1"
    answer = ScoreResponse.model_validate(RESPONSE_EXAMPLE)
    assert sum(s.points for s in answer.signals) == answer.score
    assert answer.decision == "refuse" and answer.band == "high"


def test_bentoml_validation_answers_become_a_field_list() -> None:
    raw = json.dumps({"error": "2 validation errors", "detail": [
        {"type": "missing", "loc": ["promotion", "code"], "msg": "Field required", "url": "https://errors"},
        {"type": "value_error", "loc": ["ip"], "msg": "Value error, not an IP address", "url": "https://errors"},
    ]}).encode()
    assert json.loads(contract_400(raw)) == {"error": "invalid request body: 2 fields", "errors": [
        {"field": "promotion.code", "message": "required"}, {"field": "ip", "message": "not an IP address"}]}
    assert json.loads(contract_400(b"not json"))["errors"] == [{"field": "body", "message": "not json"}]


def test_the_service_reads_the_one_settings_class_with_its_variable_names(tmp_path: Path) -> None:
    settings = Settings.from_env({
        "PROMOGUARD_ROOT": str(tmp_path), "PROMOGUARD_API_KEYS": "a, b,",
        "PROMOGUARD_REQUIRE_API_KEY": "false",
        "PROMOGUARD_VELOCITY": "redis", "PROMOGUARD_FEATURE_DEADLINE_MS": "25",
    })
    assert settings.api_keys == ("a", "b") and settings.require_api_key is False
    assert settings.velocity_backend == "redis" and settings.feature_deadline_ms == 25.0
    assert settings.mlflow_tracking_uri == f"sqlite:///{tmp_path.resolve() / 'mlflow' / 'mlflow.db'}"
    with pytest.raises(ValueError, match="PROMOGUARD_VELOCITY"):
        Settings.from_env({"PROMOGUARD_VELOCITY": "memcached"})
    with pytest.raises(ValueError, match="PROMOGUARD_REQUEST_DEADLINE_MS"):
        Settings.from_env({"PROMOGUARD_REQUEST_DEADLINE_MS": "fast"})


async def _ok_app(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def test_the_guard_builds_its_settings_from_the_environment_when_constructed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROMOGUARD_ROOT", str(tmp_path))
    monkeypatch.setenv("PROMOGUARD_RATE_LIMIT_PER_MINUTE", "3")
    monkeypatch.setenv("PROMOGUARD_MAX_BODY_BYTES", "512")
    monkeypatch.setenv("PROMOGUARD_API_KEYS", "k1")
    guard = RequestGuard(_ok_app)
    assert guard.settings.max_body_bytes == 512 and guard.settings.api_keys == ("k1",)
    assert guard.bucket.capacity == 3.0
    # A misspelt variable stops the worker at start rather than leaving the limit at its default.
    monkeypatch.setenv("PROMOGUARD_RATE_LIMIT_PER_MINUT", "3")
    with pytest.raises(InvalidSettings, match="did you mean PROMOGUARD_RATE_LIMIT_PER_MINUTE"):
        RequestGuard(_ok_app)


def _register_champion(uri: str, name: str, model_dir: Path, artifacts: Path) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.create_experiment(f"exp-{name}", artifact_location=artifacts.as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(model_dir), "model")
    client.create_registered_model(name)
    version = client.create_model_version(
        name, source=f"{client.get_run(run_id).info.artifact_uri}/model", run_id=run_id
    ).version
    client.set_registered_model_alias(name, "champion", version)
    return str(version)


def test_load_model_fetches_the_champion_of_the_configured_model_name(
    artifact_dir: Path, tmp_path: Path
) -> None:
    custom = Settings.from_env({"PROMOGUARD_MODEL_NAME": "promo-abuse-eu"}, root=tmp_path)
    version = _register_champion(
        custom.mlflow_tracking_uri, "promo-abuse-eu", artifact_dir, tmp_path / "mlflow" / "artifacts"
    )
    model = load_model(custom)
    assert model is not None and model.version == LoadedModel.from_dir(artifact_dir).version
    assert (custom.serving_dir / "models" / "promo-abuse-eu" / version / "manifest.json").is_file()
    # Under the default name the registry has no champion, and another name's cached model is no stand-in.
    assert load_model(Settings.from_env({}, root=tmp_path)) is None


def test_build_scorer_wires_the_configured_http_ip_intelligence(tmp_path: Path) -> None:
    # A literal public address: building the client opens no connection, and no model, Feast store or
    # registry exists in this root, so the scorer is built on the rules without touching the network.
    env = {"PROMOGUARD_IPINTEL_URL": "https://8.8.8.8/v1", "PROMOGUARD_IPINTEL_FAIL_OPEN": "false"}
    settings = Settings.from_env(env, root=tmp_path)
    scorer = build_scorer(settings)
    try:
        intel = scorer.resolver.ipintel
        assert isinstance(intel, CombinedIpIntel) and isinstance(intel.http, HttpIpIntel)
        assert intel.http.url == "https://8.8.8.8/v1" and intel.http.fail_open is False
        assert scorer.model is None
    finally:
        scorer.close()
    with pytest.raises(ValueError, match="not a public address"):
        build_scorer(Settings.from_env({"PROMOGUARD_IPINTEL_URL": "http://10.1.2.3/v1"}, root=tmp_path))


def test_token_bucket_limits_each_caller_separately() -> None:
    now = [0.0]
    bucket = TokenBucket(rate_per_minute=3, clock=lambda: now[0])
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") > 0
    assert bucket.take("b") == 0.0
    now[0] += 20.0  # one token per 20 s at 3 a minute
    assert bucket.take("a") == 0.0


def test_api_keys_compare_exactly() -> None:
    assert key_matches("k2", ("k1", "k2")) == "k2"
    assert key_matches("k", ("k1", "k2")) is None
    assert key_matches("", ("k1",)) is None
