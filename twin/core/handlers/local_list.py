"""Local Auth List Management profile: GetLocalListVersion (§5.10), SendLocalList (§5.15)."""

from __future__ import annotations

from datetime import datetime

from twin.core.actions import Persist
from twin.core.ports import LocalListOps, Result


def get_local_list_version(st: LocalListOps, p: dict, now: datetime) -> Result:
    return {"listVersion": st.authorization.list_version()}, []


def send_local_list(st: LocalListOps, p: dict, now: datetime) -> Result:
    status, ops = st.authorization.send_local_list(p["listVersion"], p["updateType"], p.get("localAuthorizationList"))
    return {"status": status}, [Persist(ops)] if ops else []


HANDLERS = {"GetLocalListVersion": get_local_list_version, "SendLocalList": send_local_list}
