"""Building blocks of the OCPP 1.6 security extensions (OCA "Improved security for OCPP 1.6-J",
edition 3): security events, the certificate store, CSRs and CertificateSigned, signed
firmware, the Basic-auth password, TLS contexts and the security log.

Each module is small and pure where it can be: no sockets, and file I/O only in
``certs`` (the certificate store) and ``log`` (the security log). All X.509 work goes
through ``cryptography``. Nothing in the runtime, the link or the core handlers uses
these modules yet; docs/security.md says what is built and what is not wired.
"""
