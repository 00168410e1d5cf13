"""The simulator's engines and audits: `runtime/` (the fabric on Ray), `inprocess.py` (the same rules on one partition),
`truth/` (centralised references for the audits), `launch.py` (a config to an engine), the engine interface, and the
audit metrics and locality report."""
