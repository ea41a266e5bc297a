"""The only package that imports vLLM internals: plugin, model subclass, runner and worker.

Loaded inside vLLM's own processes (the general plugin runs in each of them); the engine names
the worker class by dotted path and never imports this package.
"""
