"""Core profile: the CSMS-initiated calls of OCPP 1.6 §5 that every station supports."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Action, Persist, Restart
from twin.core.keys import TooManyKeys, canonical_name
from twin.core.ports import CallError, CoreOps, Result
from twin.core.registration import Registration
from twin.core.smart_charging import ProfileError


def rejected() -> Result:
    return {"status": "Rejected"}, []


def change_availability(st: CoreOps, p: dict, now: datetime) -> Result:
    """§5.2: Accepted, Rejected (no such connector), or Scheduled until a transaction ends."""
    cid, target = p["connectorId"], p["type"]
    if not st.has_connector(cid):
        return rejected()
    status, acts = st.change_availability(cid, target, now)
    return {"status": status}, acts


# Changed only through their own rules (twin.core.security): SecurityProfile only upwards,
# once its prerequisites hold (A05.FR.01-05); AuthorizationKey pending until it connects (A01).
SECURITY_KEYS = frozenset({"SecurityProfile", "AuthorizationKey"})


def change_configuration(st: CoreOps, p: dict, now: datetime) -> Result:
    """§5.3: the key's own validation decides (twin.core.keys); an accepted change takes effect now."""
    key, value = p["key"], p["value"]
    name = canonical_name(key)
    if name in SECURITY_KEYS and st.settings.has(name):
        status, acts = st.change_security_key(name, value, now)
        return {"status": status}, acts
    status, ops = st.settings.change(key, value)
    acts: list[Action] = [Persist(ops)] if ops else []
    if status == "Accepted" and ops:
        acts += st.key_changed(key, now)
    return {"status": status}, acts


def get_configuration(st: CoreOps, p: dict, now: datetime) -> Result:
    """§5.8."""
    try:
        return st.settings.configuration(p.get("key")), []
    except TooManyKeys as e:  # more keys than GetConfigurationMaxKeys
        raise CallError(e.code, str(e)) from e


def clear_cache(st: CoreOps, p: dict, now: datetime) -> Result:
    """§5.4."""
    return {"status": "Accepted"}, [Persist(st.authorization.clear_cache())]


def data_transfer(st: CoreOps, p: dict, now: datetime) -> Result:
    return {"status": "UnknownVendorId"}, []  # §4.3: no vendor extensions on this station


def remote_start(st: CoreOps, p: dict, now: datetime) -> Result:
    """§5.11; errata 3.41/3.42 for the charging profile it may carry."""
    if st.registration != Registration.ACCEPTED:
        return rejected()  # §4.2: not allowed while Pending
    cid = p.get("connectorId")
    id_tag = p["idTag"]
    if cid is not None and not st.has_connector(cid, allow_zero=False):
        return rejected()  # TC_027: connectorId 0 (the schema has no minimum)
    profile = p.get("chargingProfile")
    if profile is not None and (profile.get("chargingProfilePurpose") != "TxProfile" or "transactionId" in profile):
        return rejected()  # TC_060, errata 3.41/3.42
    claim = st.claim_for_remote(cid, id_tag, now)
    if claim is None:
        return rejected()
    if claim.waiting:
        return {"status": "Accepted"}, []
    acts: list[Action] = []
    if profile is not None:
        try:
            if st.smart.set_tx_profile_from_remote_start(claim.connector, profile) != "Accepted":
                return rejected()
        except ProfileError as e:
            raise CallError(e.code, str(e)) from e
        acts += st.save_profiles()
    # A session started with a TxProfile stays on the connector the profile was stored for.
    bound = cid is not None or profile is not None
    started = st.start_remote(claim.connector, id_tag, bound=bound, now=now)
    if started is None:
        return rejected()
    return {"status": "Accepted"}, acts + started


def remote_stop(st: CoreOps, p: dict, now: datetime) -> Result:
    """§5.12."""
    if st.registration != Registration.ACCEPTED:
        return rejected()
    cid = st.transaction_connector(p["transactionId"])
    if cid is None:
        return rejected()  # TC_028
    return {"status": "Accepted"}, st.stop_transaction(cid, "Remote", None, now)


def reset(st: CoreOps, p: dict, now: datetime) -> Result:
    """§5.14."""
    if p["type"] == "Soft":
        # Stop transactions gracefully (SoftReset), then restart the application.
        return {"status": "Accepted"}, st.stop_transactions("SoftReset", now) + [Restart("Soft")]
    # Hard: restart at once; the interrupted transactions are stopped with reason
    # HardReset after the new BootNotification (errata 3.36 / 3.82, TC_015).
    return {"status": "Accepted"}, st.request_hard_reset() + [Restart("Hard")]


def unlock_connector(st: CoreOps, p: dict, now: datetime) -> Result:
    """§5.18."""
    cid = p["connectorId"]
    if not st.has_connector(cid, allow_zero=False) or st.fixed_cable:
        # Errata 3.87: unknown connector or no lock (fixed cable) => NotSupported.
        return {"status": "NotSupported"}, []
    # Finish the transaction first.
    return {"status": "Unlocked"}, st.stop_transaction(cid, "UnlockCommand", None, now)


HANDLERS = {
    "ChangeAvailability": change_availability,
    "ChangeConfiguration": change_configuration,
    "GetConfiguration": get_configuration,
    "ClearCache": clear_cache,
    "DataTransfer": data_transfer,
    "RemoteStartTransaction": remote_start,
    "RemoteStopTransaction": remote_stop,
    "Reset": reset,
    "UnlockConnector": unlock_connector,
}
