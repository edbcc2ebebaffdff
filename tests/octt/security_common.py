"""What the security OCTT modules share: TC_073's AuthorizationKey and a loopback CSMS that
asks for it (security profile 1). Import ``csms`` into a test module to use it there."""

from __future__ import annotations

import pytest

from twin.csms import Csms

# TC_073's AuthorizationKey: 19 bytes as hex, "OCA_OCTT_admin_test" on the wire.
KEY = "4F43415F4F4354545F61646D696E5F74657374"


@pytest.fixture
async def csms():
    """Overrides the suite's profile-0 CSMS: this one asks for Basic auth (profile 1)."""
    server = Csms(heartbeat_interval=300, require_password=KEY)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
