"""The controller step as it was before issue 12 (project commit fc1418b), kept verbatim so that
bench/step7b.py can time "before" and "after" side by side in one run. Not used by the server."""
