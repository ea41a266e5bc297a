"""The frame cap in the engine's video step: counts above it are sampled at it and reported, or
(operator's choice) refused naming the field the client sent. Real OpenCV decoding, no server."""

from __future__ import annotations

import asyncio
import base64
import logging

import cv2
import pytest

from vreason.clients.synth_video import render_moving_shapes
from vreason.server.engine.types import EngineClientError, GenerateRequest, SamplingOptions, Usage, VideoOptions
from vreason.server.engine.config import EngineConfig
from vreason.server.engine.vllm_engine import VllmEngine
from vreason.server.video import VideoLimits

CAP = 8


def engine(media_dir, cap_frames: bool) -> VllmEngine:
    return VllmEngine(EngineConfig(model="unused", allowed_local_media_path=str(media_dir),
                                   video_limits=VideoLimits(max_frames=CAP), cap_frames=cap_frames))


def request(video: VideoOptions) -> GenerateRequest:
    return GenerateRequest("req-1", (), SamplingOptions(), video)


def load(eng, video, urls):
    usage = Usage()
    videos = asyncio.run(eng._load_videos(request(video), urls, usage))
    return videos, usage


def test_num_frames_above_the_cap_is_sampled_at_the_cap_and_reported(media_dir, caplog):
    io = VideoOptions(num_frames=12, num_frames_param="media_io_kwargs.video.num_frames")
    with caplog.at_level(logging.INFO, logger="vreason.engine"):
        videos, usage = load(engine(media_dir, True), io, [f"file://{media_dir / 'shapes.mp4'}"])
    assert videos[0].frames.shape[0] == CAP
    assert usage.videos[0].frames == CAP and usage.videos[0].requested == 12 and usage.videos[0].capped
    assert usage.videos[0].param == "media_io_kwargs.video.num_frames"
    assert "12 frames asked (media_io_kwargs.video.num_frames), above the server's cap" in caplog.text


@pytest.mark.parametrize("param", ["media_io_kwargs.video.num_frames", "mm_processor_kwargs.num_frames"])
def test_reject_mode_names_the_field_the_client_sent(media_dir, param):
    with pytest.raises(EngineClientError) as e:
        load(engine(media_dir, False), VideoOptions(num_frames=12, num_frames_param=param),
             [f"file://{media_dir / 'shapes.mp4'}"])
    assert e.value.param == param and e.value.status == 400


def test_frame_list_above_the_cap_is_sampled_down_evenly(media_dir):
    frames = render_moving_shapes(num_frames=16)
    urls = ["data:image/png;base64," + base64.b64encode(cv2.imencode(".png", cv2.cvtColor(f, cv2.COLOR_RGB2BGR))[1]
                                                        .tobytes()).decode() for f in frames]
    videos, usage = load(engine(media_dir, True), VideoOptions(), [urls])
    got = videos[0].frames
    assert got.shape[0] == CAP and usage.videos[0].capped and usage.videos[0].requested == 16
    # evenly spread, first and last kept: frames 0, 2, 4, 6, 9, 11, 13, 15 (round half up of i*15/7)
    want = [0, 2, 4, 6, 9, 11, 13, 15]
    for k, i in enumerate(want):
        assert abs(got[k].astype(int) - frames[i].astype(int)).mean() < 1.0, (k, i)  # PNG is lossless
    with pytest.raises(EngineClientError) as e:
        load(engine(media_dir, False), VideoOptions(), [urls])
    assert e.value.param == "messages"


def test_frame_list_honours_num_frames(media_dir):
    frames = render_moving_shapes(num_frames=6)
    urls = ["data:image/png;base64," + base64.b64encode(cv2.imencode(".png", f)[1].tobytes()).decode() for f in frames]
    videos, usage = load(engine(media_dir, True), VideoOptions(num_frames=4), [urls])
    assert videos[0].frames.shape[0] == 4 and not usage.videos[0].capped
