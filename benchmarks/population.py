"""Decisions for a population written apart from the simulator, sent over HTTP (one table).

The simulator's own traffic cannot judge a policy tuned on it. These shoppers are built here from the
seeds: new customers on a welcome offer, family members at one address with identities of their own,
repeat customers, VPN users, guests, trade buyers, neighbours in one apartment building (a free
sample each, a referral between them), shoppers whose checkout sends less (no address on a digital
order, no device behind a script blocker, an app's account and device alone) and shoppers who mistype
a code twice; a bot that guesses codes through proxies until one is valid; and abusers who keep two
strong identities (a welcome cycler's device and card, under the same welcome code or another one; an
intro resetter's card and phone), stack free samples at one door however it is spelled, redeem their
own referral (through a shared device and card, or the card alone), use a trade code from a consumer
account, spend a leaked single-use code again (typed in lower case), or open account after account
from one home network (the first two of each five are not counted either way). Every home sits
behind the same private router address, as millions of real homes do. Prints, per group, the attempts
and their decisions, then the honest refusal and verification rates and the recall.

Usage: ``python benchmarks/population.py [--root EXISTING_WORLD]``. Without ``--root`` (or
``PROMOGUARD_BENCH_ROOT``) a small world is built in a temporary folder with the command line. The
service runs on a private copy of the world.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

import httpx

STREETS = ("Birch Ln", "Harbor Rd", "Quarry St", "Linden Ave", "Cortland Ave", "Elm Ct", "Bay Rd")
PROMOS: dict[str, dict[str, Any]] = {
    "welcome": {"code": "WELCOME10", "type": "welcome", "discount_value": 10.0, "per_customer_limit": 1},
    "sample": {"code": "FREESAMPLE", "type": "free_sample", "discount_value": 12.0, "per_customer_limit": 1},
    "intro": {"code": "TRIAL30", "type": "intro_offer", "discount_value": 30.0, "per_customer_limit": 1},
    "sitewide": {"code": "SAVE10", "type": "sitewide", "discount_value": 10.0},
    "wholesale": {"code": "WHOLESALE20", "type": "wholesale", "discount_value": 20.0,
                  "eligible_segment": "wholesale"},
}


class Population:
    """Sends shoppers to the service and keeps each decision under (honest?, kind)."""

    def __init__(self, client: httpx.Client, seed: int = 42) -> None:
        """Send through ``client``; ``seed`` fixes every shopper."""
        self.client, self.rng, self.sent = client, random.Random(seed), 0
        self.decisions: dict[tuple[bool | None, str], list[str]] = collections.defaultdict(list)

    def token(self) -> str:
        """A fresh random hex string from the population's own generator."""
        return uuid.UUID(int=self.rng.getrandbits(128)).hex

    def person(self) -> dict[str, Any]:
        """A new shopper with an account, email, phone, address, card and device of their own."""
        r, t = self.rng, self.token()
        return {
            "email": f"{r.choice(['ana', 'ben', 'chloe', 'dev', 'eli'])}.{t[:8]}@"
                     f"{r.choice(['gmail.com', 'outlook.com', 'icloud.com'])}",
            "phone": f"+1 {r.choice(['415', '510', '212'])} {r.randint(200, 989)} {r.randint(1000, 9999)}",
            "shipping_address": {"line1": f"{r.randint(10, 9999)} {r.choice(STREETS)}", "city": "Springfield",
                                 "region": "IL", "postal_code": f"62{r.randint(100, 999)}", "country": "US"},
            "payment": {"fingerprint": f"fp_{t[8:24]}", "bin": "411111", "last4": t[:4]},
            # Every home here sits behind the same router address, as millions of real homes do.
            "device": {"device_id": str(uuid.UUID(int=r.getrandbits(128), version=4)),
                       "local_ip": "192.168.1.10", "user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5)"},
            "ip": ".".join(str(v) for v in (r.choice([24, 67, 71, 73, 98]), *r.sample(range(1, 255), 3))),
            "account": {"account_id": f"acct_{t[24:]}", "segment": "consumer"},
            "cart": {"total": round(r.uniform(30, 150), 2), "currency": "USD"},
        }

    def send(self, honest: bool | None, kind: str, who: dict[str, Any], promotion: dict[str, Any]) -> None:
        """Score one attempt, report a redemption unless refused, and keep the decision."""
        self.sent += 1
        body = {"request_id": f"pop-{self.sent}-{self.token()[:6]}", "promotion": promotion,
                **json.loads(json.dumps(who))}
        answer = self.client.post("/score", json=body).json()
        if answer["decision"] != "refuse":
            self.client.post("/outcome", json={"request_id": body["request_id"], "outcome": "redeemed"})
        self.decisions[(honest, kind)].append(answer["decision"])

    def rate(self, honest: bool, decisions: tuple[str, ...]) -> float:
        """Share of the honest (or abusive) attempts that got one of ``decisions``."""
        got = [d for (h, _), ds in self.decisions.items() if h is honest for d in ds]
        return sum(d in decisions for d in got) / len(got)


def _honest(pop: Population) -> None:
    for _ in range(100):
        pop.send(True, "new customer, welcome offer", pop.person(), PROMOS["welcome"])
    for _ in range(30):
        parent = pop.person()
        pop.send(True, "family, welcome offer", parent, PROMOS["welcome"])
        child = pop.person()
        child["shipping_address"], child["ip"] = parent["shipping_address"], parent["ip"]
        pop.send(True, "family, welcome offer", child, PROMOS["welcome"])
    for _ in range(25):
        vpn = pop.person()
        vpn["ip"] = pop.rng.choice(["185.159.157.10", "146.70.116.44"])
        pop.send(True, "VPN user, sitewide code", vpn, PROMOS["sitewide"])
    for _ in range(30):
        repeat = pop.person()
        for _ in range(3):
            pop.send(True, "repeat customer, sitewide code", repeat, PROMOS["sitewide"])
    for _ in range(25):
        pop.send(True, "free sample", pop.person(), PROMOS["sample"])
    for _ in range(15):
        trade = pop.person()
        trade["account"]["segment"] = "wholesale"
        for _ in range(2):
            pop.send(True, "trade buyer, wholesale code", trade, PROMOS["wholesale"])
    for _ in range(20):
        guest = pop.person()
        guest["account"] = {"is_guest": True}
        pop.send(True, "guest, sitewide code", guest, PROMOS["sitewide"])
    for i in range(15):
        # Strangers in one apartment building: the same street line, each behind their own door.
        first, neighbour, friend = pop.person(), pop.person(), pop.person()
        building = first["shipping_address"]
        first["shipping_address"] = dict(building, line2=f"Apt {i + 2}B")
        neighbour["shipping_address"] = dict(building, line2=f"Apt {i + 3}C")
        pop.send(True, "neighbours in one building, free sample", first, PROMOS["sample"])
        pop.send(True, "neighbours in one building, free sample", neighbour, PROMOS["sample"])
        referrer = first["account"]["account_id"]
        code = {"code": f"REF-{referrer[-6:]}", "type": "referral", "discount_value": 15.0,
                "per_customer_limit": 1, "referrer_account_id": referrer}
        friend["shipping_address"] = dict(building, line2=f"Apt {i + 4}D")
        pop.send(True, "friend in the building, referral", friend, code)


def _sparse_honest(pop: Population) -> None:
    # Real checkouts send less than a full profile: a digital order has no address, a script blocker
    # hides the device, an app sends its account and device and little else.
    for _ in range(20):
        digital = pop.person()
        del digital["shipping_address"]
        pop.send(True, "digital order, no address, welcome offer", digital, PROMOS["welcome"])
    for _ in range(20):
        blocked = pop.person()
        del blocked["device"]
        pop.send(True, "script blocker, no device, welcome offer", blocked, PROMOS["welcome"])
    for _ in range(15):
        app = pop.person()
        for field in ("email", "phone", "shipping_address", "payment"):
            del app[field]
        pop.send(True, "app: account and device only, intro offer", app, PROMOS["intro"])
    for _ in range(15):
        # Two mistyped codes first (not counted either way), then the right one.
        typo = pop.person()
        for miss in ("WELCOM10", "WELCOME1O"):
            mistyped = {"code": miss, "type": "welcome", "valid": False}
            pop.send(None, "typo before the right code", typo, mistyped)
        pop.send(True, "welcome offer after two typos", typo, PROMOS["welcome"])


def _abusers(pop: Population) -> None:
    for _ in range(20):
        first = pop.person()
        pop.send(None, "first redemption", first, PROMOS["welcome"])
        for _ in range(2):
            again = pop.person()
            again["device"], again["payment"] = first["device"], first["payment"]
            pop.send(False, "welcome cycling (same device and card)", again, PROMOS["welcome"])
    for _ in range(10):
        first = pop.person()
        pop.send(None, "first redemption", first, PROMOS["welcome"])
        again = pop.person()
        again["device"], again["payment"] = first["device"], first["payment"]
        later = dict(PROMOS["welcome"], code="WELCOME15", discount_value=15.0)
        pop.send(False, "welcome cycling under another welcome code", again, later)
    for _ in range(15):
        first = pop.person()
        pop.send(None, "first redemption", first, PROMOS["sample"])
        again = pop.person()
        door = first["shipping_address"]
        again["shipping_address"] = dict(door, line1=door["line1"].upper())
        pop.send(False, "sample stacking (same door)", again, PROMOS["sample"])
    for _ in range(15):
        first = pop.person()
        pop.send(None, "first redemption", first, PROMOS["intro"])
        again = pop.person()
        again["payment"], again["phone"] = first["payment"], first["phone"]
        pop.send(False, "intro reset (same card and phone)", again, PROMOS["intro"])
    for _ in range(15):
        pop.send(False, "trade code from a consumer account", pop.person(), PROMOS["wholesale"])
    for _ in range(10):
        # A single-use code leaks: a stranger types it in another case after its owner spent it.
        once = {"code": f"VIP-{pop.token()[:8].upper()}", "type": "sitewide", "single_use": True}
        pop.send(None, "first redemption", pop.person(), once)
        pop.send(False, "leaked single-use code, typed in lower case", pop.person(),
                 dict(once, code=once["code"].lower()))
    for _ in range(15):
        sharer = pop.person()
        pop.send(None, "referrer's own order", sharer, PROMOS["sitewide"])
        referee = pop.person()
        referee["device"], referee["payment"] = sharer["device"], sharer["payment"]
        referrer = sharer["account"]["account_id"]
        code = {"code": f"REF-{referrer[-6:]}", "type": "referral", "discount_value": 15.0,
                "per_customer_limit": 1, "referrer_account_id": referrer}
        pop.send(False, "referral to oneself (same device and card)", referee, code)
    for _ in range(10):
        sharer = pop.person()
        pop.send(None, "referrer's own order", sharer, PROMOS["sitewide"])
        referee = pop.person()
        referee["payment"] = sharer["payment"]
        referrer = sharer["account"]["account_id"]
        code = {"code": f"REF-{referrer[-6:]}", "type": "referral", "discount_value": 15.0,
                "per_customer_limit": 1, "referrer_account_id": referrer}
        pop.send(False, "referral to oneself (same card only)", referee, code)
    for _ in range(10):
        # A bot guesses codes from one machine through a new proxy each time (the misses are not
        # counted either way) until it finds an unspent single-use code.
        bot = pop.person()
        for _ in range(8):
            bot["ip"] = f"45.{pop.rng.randint(1, 250)}.{pop.rng.randint(1, 250)}.{pop.rng.randint(1, 250)}"
            guess = {"code": f"VIP-{pop.token()[:8].upper()}", "type": "sitewide", "valid": False}
            pop.send(None, "code search through proxies (misses)", bot, guess)
        found = {"code": f"VIP-{pop.token()[:8].upper()}", "type": "sitewide", "single_use": True}
        pop.send(False, "code search through proxies, then a found code", bot, found)
    for _ in range(8):
        # One machine at home, a fresh browser profile, email, card and account each time: no two
        # strong identities ever match, only the home network (public IP and local address) repeats.
        home = pop.person()
        for i in range(5):
            fresh = pop.person()
            fresh["ip"], fresh["device"]["local_ip"] = home["ip"], home["device"]["local_ip"]
            pop.send(None if i < 2 else False, "new accounts from one home network (welcome)", fresh,
                     PROMOS["welcome"])


def main() -> None:
    """Start the service on a copy of the world, send the population, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=os.environ.get("PROMOGUARD_BENCH_ROOT"))
    args = parser.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.serve import build_world, copy_world
    from promoguard.demo import free_port, running_service
    from promoguard.settings import Settings

    with tempfile.TemporaryDirectory(prefix="promoguard-bench-population-") as tmp:
        source = Path(args.root) if args.root else Path(tmp) / "world"
        if not args.root:
            build_world(source)
        copy_world(source, Path(tmp) / "copy")
        settings = Settings.from_env({}, root=Path(tmp) / "copy")
        open_access = {"PROMOGUARD_REQUIRE_API_KEY": "false"}
        with (
            (Path(tmp) / "service.log").open("wb") as log,
            running_service(settings, free_port(), extra_env=open_access, log=log) as url,
            httpx.Client(base_url=url, timeout=30.0) as client,
        ):
            pop = Population(client)
            _honest(pop)
            _sparse_honest(pop)
            _abusers(pop)
    print(f"{'shopper':<46} {'attempts':>8} {'allow':>6} {'watch':>6} {'verify':>7} {'refuse':>7}")
    for (honest, kind), decisions in sorted(pop.decisions.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        who = {True: "honest", False: "abuse", None: "not counted"}[honest]
        n = collections.Counter(decisions)
        widths = (("allow", 6), ("watch", 6), ("verify", 7), ("refuse", 7))
        counts = " ".join(f"{n[d]:>{w}}" for d, w in widths)
        print(f"{who + ': ' + kind:<46} {len(decisions):>8} {counts}")
    refused, verified = pop.rate(True, ("refuse",)), pop.rate(True, ("verify",))
    caught = pop.rate(False, ("verify", "refuse"))
    print(f"honest refused {refused:.2%}, honest verified {verified:.2%}, "
          f"abuse verified or refused {caught:.2%}")


if __name__ == "__main__":
    main()
