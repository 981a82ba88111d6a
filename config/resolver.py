"""The identity resolver of a deployable, built from its :class:`config.settings.Settings`.

The service, ``promoguard features build`` and the offline scoring behind ``promoguard drift --events``
all resolve identities through this one function, so a feature such as ``ip_is_proxy_or_vpn`` is
computed the same way for training as for scoring, HTTP IP intelligence included.
"""

from __future__ import annotations

from config.settings import Settings
from features.identity import IdentityResolver, build_resolver


def identity_resolver(settings: Settings, *, allow_loopback_for_tests: bool = False) -> IdentityResolver:
    """Keyed hashing with the settings' pepper plus offline and, when configured, HTTP IP intelligence.

    Raise ValueError when an IP feed cannot be read or ``PROMOGUARD_IPINTEL_URL`` points at a private
    or internal host (``allow_loopback_for_tests`` admits 127.0.0.1 for tests only).
    """
    return build_resolver(
        pepper=settings.pepper,
        dev_pepper=settings.uses_dev_pepper,
        default_phone_region=settings.default_phone_region,
        tor_exit_list=settings.tor_exit_source,
        proxy_list=settings.proxy_source,
        ipintel_url=settings.ipintel_http_url,
        ipintel_api_key=settings.ipintel_api_key,
        ipintel_timeout_s=settings.ipintel_http_timeout_s,
        ipintel_fail_open=settings.ipintel_fail_open,
        allow_loopback_for_tests=allow_loopback_for_tests,
    )
