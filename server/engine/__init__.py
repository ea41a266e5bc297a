"""The engine layer: request types, the EngineClient protocol and its vLLM implementation."""
