"""A small real OCPP 1.6J CSMS: `Csms`, its recorded frames and its scripting markers."""

from twin.csms.frames import NO_REPLY, CallErrorReceived, CsmsCallError, Msg
from twin.csms.server import Csms

__all__ = ["NO_REPLY", "CallErrorReceived", "Csms", "CsmsCallError", "Msg"]
