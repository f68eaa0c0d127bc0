"""The fleet simulator and detection evaluation against injected faults."""
