"""Runtime: the fabric on Ray, its transports, the coordinator, the reference engine and the audits."""
