"""Consumers of the processing results: ledger, publisher, exports, report (and the GUI)."""
