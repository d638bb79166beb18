"""glide serve's work without the server: the device queue, request parsing, the reproducing command."""

import threading

import numpy as np
import pytest
from PIL import Image

from glide_diffusion.pipelines.recipes import StageSettings
from glide_diffusion.serve.jobs import (
    BusyError,
    DeviceQueue,
    Limits,
    Options,
    RequestError,
    layers_fill,
    open_upload,
    parse_boxes,
    parse_margins,
    reproduce,
)


def test_device_queue_runs_one_job_and_refuses_beyond_its_size():
    queue = DeviceQueue(2)
    release, started, running, most = threading.Event(), threading.Barrier(4), [0], [0]
    lock = threading.Lock()

    def job():
        started.wait()
        with queue.job():
            with lock:
                running[0] += 1
                most[0] = max(most[0], running[0])
            release.wait(10)
            with lock:
                running[0] -= 1

    threads = [threading.Thread(target=job) for _ in range(3)]  # one runs, two wait: the queue is full
    for t in threads:
        t.start()
    started.wait()
    deadline = threading.Event()
    while queue.held < 3 and not deadline.wait(0.01):
        pass
    with pytest.raises(BusyError, match=r"busy: 3 requests .* the queue holds 2 \(--queue-size\)"):
        with queue.job():
            pass
    release.set()
    for t in threads:
        t.join(10)
    assert most[0] == 1 and queue.held == 0
    with queue.job():  # free again
        pass


def test_parse_boxes_and_margins():
    assert parse_boxes("0,0,10,10; 5,5,20,20\n1,2,3,4") == [(0, 0, 10, 10), (5, 5, 20, 20), (1, 2, 3, 4)]
    assert parse_boxes(" ") == []
    with pytest.raises(RequestError, match="LEFT,TOP,RIGHT,BOTTOM"):
        parse_boxes("0,0,10")
    assert parse_margins("") is None and parse_margins("8") == (8, 8, 8, 8)
    assert parse_margins("0,4,0,4") == (0, 4, 0, 4)
    for bad in ("-1", "1,2", "x", "5000"):
        with pytest.raises(RequestError, match="extend"):
            parse_margins(bad)


def test_layers_fill_is_the_brushed_pixels():
    layer = np.zeros((8, 6, 4), np.uint8)
    layer[2:4, 1:3, 3] = 255
    layer[7, 5, 3] = 1  # faint brush still counts
    fill = layers_fill([None, Image.fromarray(layer, "RGBA")], (6, 8))
    assert fill.shape == (8, 6) and fill.sum() == 5 and fill[2, 1] and fill[7, 5]
    assert layers_fill([Image.new("RGBA", (6, 8))], (6, 8)) is None  # nothing brushed
    with pytest.raises(RequestError, match="the brushed layer is 5x8 but the image is 6x8"):
        layers_fill([Image.new("RGBA", (5, 8))], (6, 8))


def test_open_upload_checks_before_decoding(tmp_path):
    limits = Limits(max_upload_mb=0.01, max_pixels=100)
    (tmp_path / "text.png").write_bytes(b"hello")
    with pytest.raises(RequestError, match="not an image"):
        open_upload(tmp_path / "text.png", limits)
    Image.new("RGB", (20, 20)).save(tmp_path / "big.png")
    with pytest.raises(RequestError, match="20x20 is 400 pixels; .* at most 100"):
        open_upload(tmp_path / "big.png", limits)
    (tmp_path / "heavy.png").write_bytes(b"\0" * 20000)
    with pytest.raises(RequestError, match="at most 0.01 MB"):
        open_upload(tmp_path / "heavy.png", limits)
    Image.new("RGB", (10, 10), "red").save(tmp_path / "ok.png")
    assert open_upload(tmp_path / "ok.png", limits).size == (10, 10)


def test_reproduce_spells_out_every_setting():
    base, up = StageSettings("dpm++2m", "25", 5.0, candidates=4), StageSettings("dpm++2m", "3", 1.0, 0.997)
    command = reproduce(
        "sample",
        ["a red circle's edge"],
        ["--models", "shapes"],
        base,
        up,
        Options(negative="blue", num_images=2, seed=7),
        [("--rerank", 1)],
    )
    assert command == (
        "glide sample 'a red circle'\"'\"'s edge' --models shapes -n 2 --seed 7 --negative blue "
        "-g 5 --base-sampler dpm++2m --base-steps 25 --up-sampler dpm++2m --up-steps 3 "
        "--candidates 4 --rerank 1"
    )
    command = reproduce("edit", ["input.png", "-a circle"], [], base, up, Options())
    assert command.startswith("glide edit -n 1 --seed 0") and command.endswith("-- input.png '-a circle'")
