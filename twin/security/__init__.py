"""The OCPP 1.6 security extensions (OCA "Improved security for OCPP 1.6-J", edition 3):
security events, the certificate store and its service, CSRs and CertificateSigned, signed
firmware, the Basic-auth password, TLS contexts and the transport plan per profile, and the
security log.

The decisions that depend on the station's state (which profile and key are in use, what
ChangeConfiguration answers, which events are queued) are in the pure core
(:mod:`twin.core.security`, :meth:`twin.core.station.Station.security_event`). The modules
here do the X.509, file and connection work; all X.509 goes through ``cryptography``.
docs/security.md has the map.
"""
