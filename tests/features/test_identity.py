"""Identity normalisation, keyed hashing, frame resolution and the privacy guarantee."""

from __future__ import annotations

import dataclasses
import io
import logging

import pandas as pd
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import features.identity as identity
import features.ipintel as ipintel
from features.identity import (
    FLAG_COLUMNS,
    KEY_COLUMNS,
    IdentityConfig,
    IdentityKeys,
    IdentityResolver,
    KeyHasher,
    collapse_report,
    normalize_address,
    normalize_device,
    normalize_email,
    normalize_ip,
    normalize_phone,
    resolve_frame,
)
from features.ipintel import OfflineIpIntel, cloud_ranges

PEPPER = "test-pepper-not-the-dev-one"


@pytest.fixture(scope="module")
def resolver() -> IdentityResolver:
    return IdentityResolver(IdentityConfig(pepper=PEPPER), OfflineIpIntel(tor_exit_list=["185.220.101.7"],
                                                                         proxy_list=["45.0.0.0/16"]))


# --- email ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "variant",
    ["johndoe@gmail.com", "John.Doe@gmail.com", "j.o.h.n.doe+promo5@gmail.com", " JOHNDOE@GoogleMail.com ",
     "john.doe+x+y@googlemail.com"],
)
def test_gmail_dot_plus_and_googlemail_variants_fold_to_one_mailbox(variant: str) -> None:
    assert normalize_email(variant).canonical == "johndoe@gmail.com"


def test_alias_flag_marks_deliberate_variations_only() -> None:
    assert normalize_email("john.doe@gmail.com").is_alias
    assert normalize_email("johndoe+welcome@outlook.com").is_alias
    assert normalize_email("johndoe@googlemail.com").is_alias
    assert not normalize_email("JohnDoe@gmail.com").is_alias  # case is not a trick
    assert not normalize_email("john.doe@example.com").is_alias  # dots matter outside gmail
    assert not normalize_email("me@mac.com").is_alias  # a legacy domain, not a disguise


def test_plus_tags_are_stripped_only_where_the_provider_honours_them() -> None:
    assert normalize_email("ann+shop@fastmail.com").canonical == "ann@fastmail.com"
    assert normalize_email("ann+shop@icloud.com").canonical == "ann@icloud.com"
    assert normalize_email("ann-shop@yahoo.com").canonical == "ann@yahoo.com"
    assert normalize_email("ann+shop@example.com").canonical == "ann+shop@example.com"
    assert normalize_email("ann-shop@gmail.com").canonical == "ann-shop@gmail.com"


def test_provider_domain_aliases_fold_but_regional_domains_stay() -> None:
    assert normalize_email("ann@me.com").canonical == "ann@icloud.com"
    assert normalize_email("ann@mac.com").canonical == "ann@icloud.com"
    assert normalize_email("ann@pm.me").canonical == "ann@proton.me"
    assert normalize_email("ann@protonmail.ch").canonical == "ann@proton.me"
    assert normalize_email("ann@hotmail.co.uk").canonical == "ann@hotmail.co.uk"


def test_idn_domain_becomes_punycode_and_matches_its_ascii_form() -> None:
    assert normalize_email("ann@BÜCHER.de").canonical == "ann@xn--bcher-kva.de"
    assert normalize_email("ann@xn--bcher-kva.de").canonical == "ann@xn--bcher-kva.de"


def test_disposable_and_free_provider_flags() -> None:
    assert normalize_email("x@mailinator.com").disposable
    assert not normalize_email("x@mailinator.com").free_provider
    assert normalize_email("x@gmail.com").free_provider
    assert normalize_email("x@gmx.de").free_provider
    assert not normalize_email("x@acme-corp.com").free_provider
    assert not normalize_email("x@acme-corp.com").disposable


@pytest.mark.parametrize(
    "garbage",
    ["", "   ", "no-at-sign", "a@@b.com", "@gmail.com", "a@b", "a b@gmail.com", "a@-bad-.com", "x" * 400,
     "a@1.2.3.4"],
)
def test_garbage_email_is_invalid_with_a_reason_not_an_exception(garbage: str) -> None:
    result = normalize_email(garbage)
    assert result.canonical is None
    assert result.error
    assert result.missing or result.invalid


@given(st.text(max_size=80))
def test_email_normalisation_never_raises(text: str) -> None:
    normalize_email(text)


_local = st.from_regex(r"[a-z0-9][a-z0-9._+\-]{0,15}[a-z0-9]", fullmatch=True)
_domain = st.sampled_from(["gmail.com", "googlemail.com", "yahoo.com", "outlook.com", "example.org", "me.com",
                           "bücher.de", "proton.me"])


@given(_local, _domain)
@example("0.+x", "outlook.com")  # a dot before the tag must not survive as a trailing dot
def test_email_normalisation_is_idempotent_and_case_insensitive(local: str, domain: str) -> None:
    first = normalize_email(f"{local}@{domain}")
    if first.canonical is None:
        return
    assert normalize_email(first.canonical).canonical == first.canonical
    assert normalize_email(f"  {local.upper()}@{domain.upper()} ").canonical == first.canonical


# --- phone ------------------------------------------------------------------------------------------


def test_phone_formats_resolve_to_one_e164() -> None:
    variants = ["+1 415-555-0100", "(415) 555 0100", "4155550100", "415.555.0100", "+1 (415) 555-0100"]
    assert {normalize_phone(v, "US").canonical for v in variants} == {"+14155550100"}


def test_default_region_decides_national_numbers() -> None:
    assert normalize_phone("07911 123456", "GB").canonical == "+447911123456"
    assert normalize_phone("+44 7911 123456", "US").canonical == "+447911123456"


def test_unparsable_phone_with_ten_digits_falls_back_to_last_ten() -> None:
    result = normalize_phone("call me 0049-415-555-0100-x", "US")
    assert result.invalid
    assert result.canonical == "last10:4155550100"


def test_phone_flags_missing_invalid_and_non_mobile() -> None:
    assert normalize_phone(None).missing
    short = normalize_phone("123")
    assert short.invalid and short.canonical is None
    assert normalize_phone("+44 20 7946 0958").non_mobile  # a London fixed line


@given(st.text(max_size=40))
def test_phone_normalisation_never_raises_and_is_idempotent(text: str) -> None:
    result = normalize_phone(text, "US")
    if result.canonical is not None and result.canonical.startswith("+"):
        assert normalize_phone(result.canonical, "US").canonical == result.canonical


# --- address ----------------------------------------------------------------------------------------


def _addr(
    line1: str, line2: str | None = None, zip_code: str = "62701", country: str = "US"
) -> tuple[str, ...]:
    result = normalize_address(line1, line2, "Springfield", "IL", zip_code, country)
    assert result.household is not None and result.address is not None
    return result.household, result.address


def test_three_spellings_of_one_flat_are_one_household_and_one_address() -> None:
    variants = {_addr("123 Main St Apt 4B"), _addr("123 main street #4b"), _addr("123 Main, Apt 4-B"),
                _addr("123 MAIN ST.", "Unit 4b"), _addr("123 Main Street", "apt 4-B", zip_code="62701-1234")}
    assert len(variants) == 1


def test_another_flat_of_the_building_is_another_household() -> None:
    # Neighbours are strangers: a cap or a referral check on the building would refuse them.
    h1, a1 = _addr("123 Main St Apt 4B")
    h2, a2 = _addr("123 Main St Apt 5C")
    assert h1 != h2 and a1 != a2
    assert _addr("123 Main St", line2="Apt 4B")[0] == h1


def test_different_house_number_or_zip_is_a_different_household() -> None:
    assert _addr("123 Main St Apt 4B")[0] != _addr("125 Main St Apt 4B")[0]
    assert _addr("123 Main St")[0] != _addr("123 Main St", zip_code="62702")[0]


def test_directionals_and_suffixes_use_usps_forms() -> None:
    assert _addr("12 North Oak Avenue")[0] == _addr("12 N Oak Ave")[0]


def test_non_us_address_uses_normalised_text_key() -> None:
    a = normalize_address("10 Downing Street", None, "London", None, "SW1A 2AA", "GB")
    b = normalize_address(" 10, downing  STREET ", None, "LONDON", None, "sw1a 2aa", "gb")
    assert a.household == b.household is not None
    assert not a.unparsed


def test_missing_and_unparsable_addresses_are_flagged() -> None:
    assert normalize_address(None, None, None, None, None, None).missing
    junk = normalize_address("###", None, None, None, None, "US")
    assert junk.household is None and junk.unparsed


_street_line = st.builds(
    lambda no, pre, name, suffix, post, unit: " ".join(p for p in (no, pre, name, suffix, post, unit) if p),
    st.integers(1, 99999).map(str),
    st.sampled_from(["", "N", "South", "ne", "W."]),
    st.sampled_from(["Main", "oak", "Martin Luther King", "5th", "Elm Grove", "Pennsylvania", "Lake Shore",
                     "Oak Park", "Mill Creek", "Sunset Hill"]),
    st.sampled_from(["", "St", "Street", "AVE", "Blvd.", "Road", "Ln", "Way", "Park", "Terrace"]),
    st.sampled_from(["", "NW", "East"]),
    st.sampled_from(["", "Apt 4B", "#4b", "Unit 12", "Ste. 200", "apt 4-B", ", Apt 3"]),
)


@given(_street_line)
@settings(max_examples=150)
def test_fast_street_scan_agrees_with_usaddress_when_both_answer(line: str) -> None:
    fast, slow = identity.us_street_line_readings(line)
    # The scan may read lines the CRF gives up on (e.g. "1 oak"); where both answer they must agree.
    if fast is not None and slow is not None:
        assert fast == slow


def test_fast_street_scan_handles_the_common_shapes() -> None:
    for line in ["123 Main St Apt 4B", "123 main street #4b", "123 Main, Apt 4-B", "12 N Oak Ave NW"]:
        fast, _slow = identity.us_street_line_readings(line)
        assert fast is not None, line


@given(st.text(max_size=60), st.one_of(st.none(), st.text(max_size=20)), st.text(max_size=12))
@settings(max_examples=60)
def test_address_normalisation_never_raises(line1: str, line2: str | None, zip_code: str) -> None:
    normalize_address(line1, line2, "City", "ST", zip_code, "US")


# --- device and network -----------------------------------------------------------------------------


def test_device_ids_validate_and_canonicalise() -> None:
    uuid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301"
    assert normalize_device(uuid) == normalize_device("{3f2504e04f8911d39a0c0305e82c3301}")
    assert normalize_device("00000000-0000-0000-0000-000000000000") is None
    assert normalize_device("not a device") is None
    assert normalize_device("abc") is None
    assert normalize_device(None) is None
    assert normalize_device("deadbeefcafe0042") == "deadbeefcafe0042"


def test_opaque_sdk_device_ids_count_as_devices_and_placeholders_do_not() -> None:
    # A visitor id from a device SDK and a prefixed id are real devices: never "device missing".
    assert normalize_device("Ibk1527CUFmcnjLwIs4A") == "Ibk1527CUFmcnjLwIs4A"
    assert normalize_device("dev-zzzz9876") == "dev-zzzz9876"
    assert normalize_device("Ibk1527CUFmcnjLwIs4A") != normalize_device("ibk1527cufmcnjlwis4a")
    placeholders = ("undefined", "NULL", "unknown", "device-id", "no_device", "xxxxxxxx", "--------", "d 1 2")
    for placeholder in placeholders:
        assert normalize_device(placeholder) is None, placeholder


def test_ip_networks_are_slash_24_and_slash_64() -> None:
    assert normalize_ip("203.0.113.77").network == "203.0.113.0/24"
    assert normalize_ip(" 2001:DB8:aa:bb:1::9 ").network == "2001:db8:aa:bb::/64"
    assert normalize_ip("::ffff:203.0.113.77").ip == "203.0.113.77"
    assert normalize_ip("999.1.1.1").ip is None


@pytest.mark.parametrize(
    "address",
    ["10.0.0.5", "192.168.1.10", "172.16.4.4", "100.64.12.1", "127.0.0.1", "169.254.9.9", "0.0.0.0",
     "::1", "fe80::1", "fd12:3456::7", "::ffff:10.0.0.5"],
)
def test_an_address_that_is_never_a_shoppers_public_one_is_no_public_ip(
    address: str, resolver: IdentityResolver
) -> None:
    # A proxy forwarding its own private address would otherwise make every shopper one network.
    assert normalize_ip(address) == normalize_ip(None)
    keys = resolver.resolve({"ip": address})
    assert keys.network_key is None and keys.ip_key is None and keys.ip_missing


def test_public_and_documentation_addresses_keep_their_network() -> None:
    for address in ("172.56.1.1", "100.128.0.1", "73.162.10.21", "198.51.100.7", "2001:db8::1"):
        assert normalize_ip(address).network is not None, address


# --- hashing ----------------------------------------------------------------------------------------


def test_key_hasher_is_keyed_kind_separated_and_32_hex() -> None:
    a = KeyHasher("pepper-a")
    assert len(a.key("email", "x@y.com")) == 32
    assert a.key("email", "x@y.com") == KeyHasher("pepper-a").key("email", "x@y.com")
    assert a.key("email", "x@y.com") != KeyHasher("pepper-b").key("email", "x@y.com")
    assert a.key("email", "abc") != a.key("device", "abc")
    with pytest.raises(ValueError, match="pepper"):
        KeyHasher("")


def test_dev_pepper_warns_once(caplog: pytest.LogCaptureFixture) -> None:
    ipintel.reset_warn_once("dev-pepper")
    with caplog.at_level(logging.WARNING, logger="features.identity"):
        KeyHasher("dev", is_dev_pepper=True)
        KeyHasher("dev", is_dev_pepper=True)
    assert sum("development pepper" in r.getMessage() for r in caplog.records) == 1


# --- resolver ---------------------------------------------------------------------------------------


def _record(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "request_id": "r1", "email": "Jane.Roe+x@gmail.com", "phone": "(415) 555 0100",
        "ship_line1": "123 Main St Apt 4B", "ship_city": "Springfield", "ship_region": "IL",
        "ship_postal_code": "62701", "ship_country": "US",
        "bill_line1": "123 main street #4b", "bill_city": "Springfield", "bill_region": "IL",
        "bill_postal_code": "62701", "bill_country": "US",
        "payment_fingerprint": "fp_123", "device_id": "3f2504e0-4f89-11d3-9a0c-0305e82c3301",
        "ip": "73.12.34.56", "local_ip": "192.168.1.20", "account_id": "acct-1",
        "referrer_account_id": "acct-9", "is_guest": False,
    }
    base.update(overrides)
    return base


def test_identity_keys_have_exactly_the_contract_names() -> None:
    names = set(IdentityKeys.__dataclass_fields__)
    assert names == {
        "account_key", "email_key", "phone_key", "household_key", "address_key", "bill_household_key",
        "payment_key", "device_key", "network_key", "ip_key", "local_ip_key", "referrer_key",
        "email_missing", "email_invalid", "email_is_alias", "email_disposable", "email_free_provider",
        "phone_missing", "phone_invalid", "phone_voip", "address_missing", "address_unparsed",
        "ship_bill_mismatch", "device_missing", "ip_missing", "ip_is_datacenter", "ip_is_tor",
        "ip_is_proxy_or_vpn", "ip_provider",
    }


def test_resolve_joins_variants_and_sets_flags(resolver: IdentityResolver) -> None:
    a = resolver.resolve(_record())
    b = resolver.resolve(_record(email="janeroe@googlemail.com", phone="+1 415-555-0100",
                                 ship_line1="123 Main, Apt 4-B", ip="73.12.34.99"))
    for key in ("email_key", "phone_key", "household_key", "address_key", "network_key", "device_key"):
        assert getattr(a, key) == getattr(b, key) is not None, key
    assert a.ip_key != b.ip_key
    assert a.email_is_alias and not a.ship_bill_mismatch and not a.device_missing
    assert a.referrer_key == resolver.resolve(_record(account_id="acct-9")).account_key
    assert not a.ip_is_datacenter and a.ip_provider is None
    assert set(a.as_dict()) == set(KEY_COLUMNS) | set(FLAG_COLUMNS)
    assert list(a.as_dict().items()) == list(dataclasses.asdict(a).items())


def test_resolve_flags_risky_ips_and_missing_identity(resolver: IdentityResolver) -> None:
    _version, ranges = cloud_ranges()
    cidr, provider = next((c, p) for c, p in ranges if ":" not in c and p == "aws")
    dc_ip = cidr.split("/")[0]
    keys = resolver.resolve({"ip": dc_ip, "device_id": "00000000-0000-0000-0000-000000000000",
                             "is_guest": True, "account_id": "guest-cookie"})
    assert keys.ip_is_datacenter and keys.ip_provider == provider
    assert keys.device_missing and keys.device_key is None
    assert keys.account_key is None  # guests have no account identity
    assert keys.email_missing and keys.phone_missing and keys.address_missing
    assert resolver.resolve({"ip": "185.220.101.7"}).ip_is_tor
    assert resolver.resolve({"ip": "45.0.3.3"}).ip_is_proxy_or_vpn
    assert resolver.resolve({"ip": "garbage"}).ip_missing


def test_ship_bill_mismatch_when_billing_household_differs(resolver: IdentityResolver) -> None:
    assert resolver.resolve(_record(bill_line1="9 Elm St")).ship_bill_mismatch
    assert not resolver.resolve(_record(bill_line1=None, bill_postal_code=None)).ship_bill_mismatch


# --- frames -----------------------------------------------------------------------------------------


RAW_SECRETS = {
    "email": "Secret.Person+promo@gmail.com", "phone": "(415) 555 0199", "ship_line1": "77 Hidden Lane",
    "ship_line2": "Apt 9Z", "ship_postal_code": "94110", "bill_line1": "78 Hidden Lane",
    "ip": "73.99.88.77", "local_ip": "10.1.2.3", "account_id": "acct-secret-42",
    "payment_fingerprint": "fp_secret_99", "device_id": "abcdef0123456789abcdef",
    "referrer_account_id": "acct-ref-secret",
}


def _events(n: int = 6) -> pd.DataFrame:
    rows = []
    for i in range(n):
        row = _record(request_id=f"req-{i}", **RAW_SECRETS)
        row.update(ts=pd.Timestamp("2026-01-01", tz="UTC") + pd.Timedelta(minutes=i), promo_code="WELCOME10",
                   promo_type="welcome", promo_valid=True, discount_value=10.0, outcome="redeemed",
                   account_created_at=None, account_segment="new", cart_total=50.0, currency="USD",
                   user_agent="Mozilla/5.0 SecretAgent", payment_bin="411111", payment_last4="4242",
                   ship_city="San Francisco", ship_region="CA", bill_postal_code="94110")
        rows.append(row)
    frame = pd.DataFrame(rows)
    frame.loc[1, "email"] = None
    frame.loc[2, "phone"] = float("nan")
    frame.loc[3, "ship_line1"] = "77 hidden ln #9z"
    return frame


def test_resolve_frame_matches_resolve_row_by_row(resolver: IdentityResolver) -> None:
    events = _events()
    out = resolve_frame(events, resolver)
    assert list(out["request_id"]) == list(events["request_id"])
    for i, record in enumerate(events.to_dict("records")):
        expected = resolver.resolve({str(k): v for k, v in record.items()}).as_dict()
        got = {k: out.iloc[i][k] for k in expected}
        got = {k: (None if isinstance(v, float) and v != v else v) for k, v in got.items()}
        assert got == expected, i
    assert out["address_key"].iloc[3] == out["address_key"].iloc[0]


def test_resolve_frame_requires_request_id(resolver: IdentityResolver) -> None:
    with pytest.raises(ValueError, match="request_id"):
        resolve_frame(pd.DataFrame({"email": ["a@b.com"]}), resolver)


def test_no_raw_identity_reaches_the_output_or_the_logs(
    resolver: IdentityResolver, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG):
        events = _events()
        out = resolve_frame(events, resolver)
        resolver.resolve({str(k): v for k, v in events.iloc[0].items()})
        resolver.resolve({"email": "broken@@" + RAW_SECRETS["email"], "phone": "12"})
    buffer = io.BytesIO()
    out.to_parquet(buffer)
    blob = buffer.getvalue()
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    canonical = normalize_email(RAW_SECRETS["email"]).canonical
    assert canonical is not None
    derived = [canonical, "+14155550199", "73.99.88.0/24", "SecretAgent", "411111"]
    for secret in [*RAW_SECRETS.values(), *derived]:
        assert secret.encode() not in blob, secret
        assert secret.casefold() not in blob.decode("latin-1").casefold(), secret
        assert secret not in log_text, secret
    assert not {"email", "phone", "ip", "device_id", "account_id", "user_agent"} & set(out.columns)


def test_collapse_report_measures_per_pattern_collapse(resolver: IdentityResolver) -> None:
    events = pd.DataFrame([
        _record(request_id="a1", email="ann.lee@gmail.com", phone="4155550101", device_id="aaaaaaaa01"),
        _record(request_id="a2", email="annlee+2@gmail.com", phone="(415) 555-0101", device_id="aaaaaaaa01"),
        _record(request_id="b1", email="bob@example.com", phone="4155550102", device_id="bbbbbbbb01"),
        _record(request_id="b2", email="rob@example.com", phone="4155550103", device_id="bbbbbbbb02"),
    ])
    truth = pd.DataFrame({"request_id": ["a1", "a2", "b1", "b2"], "actor_id": ["A", "A", "B", "B"],
                          "pattern": ["alias_cycling", "alias_cycling", "legit", "legit"]})
    report = collapse_report(resolve_frame(events, resolver), truth, events).set_index(["pattern", "key"])
    assert report.loc[("alias_cycling", "email_key"), "collapse_rate"] == 1.0
    assert report.loc[("alias_cycling", "phone_key"), "keys_per_actor"] == 1.0
    assert report.loc[("legit", "device_key"), "single_key_share"] == 0.0
    assert report.loc[("legit", "email_key"), "collapse_rate"] == 0.0
