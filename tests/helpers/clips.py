"""Names of the clips the session-scoped `media_dir` fixture writes (tests/conftest.py)."""

SHORT_CLIP = "shapes.mp4"  # 16 frames at 8 fps: samples to 4 frames at 2 fps, 2 temporal patches
LONG_CLIP = "long.mp4"  # 16 frames at 2 fps: samples to 16 frames, 8 temporal patches
