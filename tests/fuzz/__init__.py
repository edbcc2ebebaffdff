"""Fuzzers that hunt "a legal CSMS message hangs, faults or robs the station".

- ``payloads``: schema-valid OCPP 1.6 payloads generated from the ``ocpp`` package's own
  JSON schemas, biased to edge values and to values the station knows.
- ``core_fuzz``: drives the pure core with a fake clock and the real SQLite store.
- ``process_fuzz``: drives a real ``twin run`` process on loopback.

``python -m tests.fuzz core|process ...`` runs either for longer; docs/fuzzing.md says how.
"""
