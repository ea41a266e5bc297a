from __future__ import annotations

import asyncio

import numpy as np
import pytest

from vreason.server import video as video_pkg
from vreason.server.video import SamplingSpec, VideoError, VideoLimits, load_video


def test_load_video_from_data_url(clip_bytes, make_data_url):
    video = asyncio.run(load_video(make_data_url(clip_bytes), spec=SamplingSpec(num_frames=4)))
    assert video.frames.shape == (4, 112, 112, 3)
    assert video.metadata["frames_indices"] == [0, 5, 10, 15]


def test_load_video_from_allowed_file(clip_path):
    video = asyncio.run(load_video(f"file://{clip_path}", allowed_local_media_path=str(clip_path.parent)))
    assert video.metadata["frames_indices"] == [0, 4, 8, 12]


def test_errors_cross_the_thread_boundary(clip_bytes, make_data_url):
    async def main():
        with pytest.raises(VideoError) as err:
            await load_video("https://example.com/v.mp4")
        assert err.value.code == "unsupported_media_url"
        with pytest.raises(VideoError) as err:
            await load_video(make_data_url(clip_bytes), limits=VideoLimits(max_bytes=100))
        assert err.value.status == 413
        with pytest.raises(VideoError) as err:
            await load_video(make_data_url(b"garbage" * 100))
        assert err.value.code == "video_decode_failed"
    asyncio.run(main())


def test_concurrent_loads_agree_and_do_not_block_the_loop(clip_bytes, make_data_url):
    url = make_data_url(clip_bytes)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0)

        tick_task = asyncio.create_task(ticker())
        videos = await asyncio.gather(*(load_video(url) for _ in range(3 * video_pkg.MAX_CONCURRENT_DECODES)))
        tick_task.cancel()
        return videos, ticks

    videos, ticks = asyncio.run(main())
    assert ticks > 1  # the event loop kept running while frames were decoded
    for v in videos[1:]:
        assert np.array_equal(v.frames, videos[0].frames) and v.metadata == videos[0].metadata
    # A second event loop in the same process gets its own semaphore.
    assert asyncio.run(load_video(url)).frames.shape == videos[0].frames.shape


def test_cancelled_load_propagates_cancellation(clip_bytes, make_data_url):
    async def main():
        task = asyncio.create_task(load_video(make_data_url(clip_bytes)))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The pool is still usable afterwards.
        return await load_video(make_data_url(clip_bytes))
    assert asyncio.run(main()).frames.shape == (4, 112, 112, 3)
