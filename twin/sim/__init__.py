"""The simulated world around a station in fake-driver mode: the EV behind each connector.

Nothing here is part of the charge point. The core sees only what the drivers measure
(plug, contactor, meter); the simulated meter asks these models how much they draw.
"""
