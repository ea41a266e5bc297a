"""Video QA evaluation over HTTP: Video-R1-style prompt, answer extraction, scoring, runner, report.

Everything here talks to a server through its OpenAI-compatible HTTP API only.
"""
