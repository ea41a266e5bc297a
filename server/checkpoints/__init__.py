"""Checkpoint builders for the embedded demo models (built once into the cache, served like any
checkpoint): `demo` (a small random Qwen2.5-VL) and `smollm2` (SmolLM2-135M-Instruct grafted
into Qwen2.5-VL with the demo's vision tower, the default served model)."""
