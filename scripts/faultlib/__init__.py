"""The fault suite behind `scripts/faulttest`: one module per fault class, and the harness
they share (running real `conductor` processes, reading the probe log and the state)."""
