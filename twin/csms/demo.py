"""`twin demo`: the built-in CSMS and a simulated station on one machine, on security
profile 0, 1, 2 or 3, then a scripted charging session.

- Profile 1: a random 20-byte AuthorizationKey (40 hex digits) on both sides; HTTP Basic over ws://.
- Profile 2: the private PKI (`twin.csms.pki`) is made (or reused); its CSMS root is put in
  the station's certificate store as a CentralSystemRootCertificate before the station
  starts; the station connects to ``wss://localhost:<port>`` (a name, not an IP: the server
  certificate has CN = localhost and no SAN) with HTTP Basic.
- Profile 3: also a charge point key pair: key and CSR made with the station's own CSR code
  (O = CpoName, CN = the serial number, A02.FR.13, A00.FR.405), signed by the CSMS CA and
  imported into the store as factory credentials; no Basic auth.

The station reads a TOML written into its data dir (mode 0600: it holds the key) with
``[keys] SecurityProfile``, so it runs the real configuration path. At the end the demo
prints what the CSMS saw of the handshake (profile, TLS version, cipher, client subject).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import signal
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization

from twin.csms.pki import CsmsPki
from twin.csms.server import Csms

log = logging.getLogger("twin.cli")

CHARGE_POINT_ID = "iEVQC33-DEMO"
SERIAL = "IEVQC33-DEMO-0001"
CPO_NAME = "ocpp-twin demo CPO"
CARD = "DEMO-CARD-01"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    return json.dumps(str(value))  # a TOML basic string for this ASCII text


def station_toml(url: str, profile: int, key: str | None) -> str:
    """The demo station's config file text."""
    lines = ["[station]", f"charge_point_id = {_toml(CHARGE_POINT_ID)}", "", "[csms]", f"url = {_toml(url)}"]
    if key is not None:
        lines.append(f"password = {_toml(key)}")
    lines += ["", "[identity]", f"chargePointSerialNumber = {_toml(SERIAL)}", "", "[keys]",
              f"MeterValueSampleInterval = {_toml(5)}", f"CpoName = {_toml(CPO_NAME)}"]
    if profile:
        lines.append(f"SecurityProfile = {_toml(profile)}")
    return "\n".join(lines) + "\n"


def provision_station(data_dir: Path, pki: CsmsPki, profile: int) -> str | None:
    """Put the CSMS root (profiles 2, 3) and a charge point certificate (profile 3) into the
    station's certificate store; returns the client certificate subject for profile 3."""
    from twin.security.certs import CertificateStore
    from twin.security.csr import build_csr, generate_key
    from twin.security.pki import CENTRAL_SYSTEM_ROOT

    store = CertificateStore(data_dir)
    outcome = store.install_root(CENTRAL_SYSTEM_ROOT, pki.csms_root_pem(), datetime.now(UTC), 20)
    if outcome.status != "Accepted":
        raise RuntimeError(f"cannot install the CSMS root in the station's store: {outcome.reason}")
    if profile != 3:
        return None
    key = generate_key()
    chain = pki.sign_csr(build_csr(key, SERIAL, CPO_NAME))
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    credentials = store.import_charge_point_credentials(chain, key_pem)
    return credentials.certificate.subject.rfc4514_string()


async def run_demo(args: Any) -> int:
    from twin.config import load_config
    from twin.runtime import Runtime

    profile = getattr(args, "security_profile", 0) or 0
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="twin-demo-")
        data_dir = Path(tmp.name)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    pki = None
    key = secrets.token_hex(20).upper() if profile in (1, 2) else None  # 20 random bytes, as hex
    if profile in (2, 3):
        pki = CsmsPki(getattr(args, "pki", None) or data_dir / "csms-pki").ensure()
    csms = Csms.for_profile(profile, pki=pki, authorization_key=key, port=args.csms_port, heartbeat_interval=60)
    rt = None
    try:
        await csms.start()
        client_subject = provision_station(data_dir, pki, profile) if pki is not None else None
        config_file = data_dir / "demo-station.toml"
        fd = os.open(config_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(station_toml(csms.url, profile, key))
        cfg = load_config(config_file, {"data_dir": data_dir, "control": args.control, "sim": True})
        rt = Runtime(cfg)
        await rt.start()
        lines = [f"  CSMS:        {csms.url}/{CHARGE_POINT_ID}   (security profile {profile})",
                 f"  control API: {rt.api.url}   (try: twin sim --control {rt.api.url} state)",
                 f"  dashboard:   {rt.api.url}/"]
        if key is not None:
            lines.append("  HTTP Basic:  a random 20-byte AuthorizationKey (in the demo config, not shown)")
        if pki is not None:
            lines.append(f"  CSMS root:   {pki.csms_root}   (installed in the station's certificate store)")
        if client_subject:
            lines.append(f"  client cert: {client_subject}   (signed by the CSMS root, imported into the store)")
        print("\n" + "\n".join(lines) + "\n", flush=True)
        return await _session(args, csms, rt, profile, client_subject)
    finally:
        if rt is not None:
            await rt.shutdown("Other", graceful=True, drain_s=2)
        await csms.stop()
        if tmp is not None:
            tmp.cleanup()


async def _session(args: Any, csms: Csms, rt: Any, profile: int, client_subject: str | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await csms.wait_connected(timeout=15)
    except TimeoutError:
        print(f"demo: the station did not connect on security profile {profile}: "
              f"{getattr(rt.link, 'last_error', None) or 'no error reported'}", flush=True)
        return 1
    shake = csms.last_handshake
    ok = shake is not None and shake.profile == profile and shake.refused is None
    if profile == 3:
        ok = ok and shake is not None and shake.client_subject == client_subject
    tls = f", {shake.tls_version}, cipher {shake.cipher}" if shake and shake.tls_version else ""
    client = f", client certificate {shake.client_subject}" if shake and shake.client_subject else ""
    user = f", Basic user {shake.auth_user}" if shake and shake.auth_user else ""
    await _wait_registered(rt)
    log.info("demo: an EV plugs into connector 1")
    await rt.plug(1)
    log.info("demo: the driver taps card %s on the reader", CARD)
    await rt.rfid(CARD)
    await _sleep_or(stop, args.session_s)
    s = rt.state()["connectors"][0]
    log.info("demo: charging: status %s, %.0f W, %.1f Wh so far", s["status"], s["powerW"], s["energyWh"])
    log.info("demo: the driver taps the card again to stop")
    await rt.rfid(CARD)
    try:
        await csms.wait_for("StopTransaction", timeout=10)
    except TimeoutError:
        pass
    await rt.unplug(1)
    await asyncio.sleep(1)
    stops = csms.calls("StopTransaction")
    log.info("demo: session done: CSMS received %d StartTransaction, %d MeterValues, %d StopTransaction",
             len(csms.calls("StartTransaction")), len(csms.calls("MeterValues")), len(stops))
    verdict = "worked" if ok and stops else "FAILED"
    print(f"\ndemo: security profile {profile} {verdict}: the CSMS saw profile "
          f"{shake.profile if shake else '?'}{tls}{client}{user}", flush=True)
    if csms.schema_errors:
        print(f"demo: the CSMS recorded {len(csms.schema_errors)} protocol problem(s): {csms.schema_errors[:3]}",
              flush=True)
    if not args.once:
        print("\nThe station keeps running; drive it with `twin sim ...` or curl. Ctrl-C to stop.", flush=True)
        await stop.wait()
    return 0 if ok and stops else 1


async def _wait_registered(rt: Any, timeout: float = 15.0) -> None:
    for _ in range(int(timeout * 10)):
        if rt.station.registration == "Accepted":
            return
        await asyncio.sleep(0.1)
    raise RuntimeError("station did not register with the CSMS")


async def _sleep_or(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), timeout=seconds)
    except TimeoutError:
        pass
