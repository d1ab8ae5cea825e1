"""Soak: several clients hammer a launched app with good and bad requests for a bounded time.

Every good request must return the pixels it returns alone, every bad one a message; nothing may reach the
log as an error, and the server's memory must stay bounded. Prints the measured RSS growth.
"""

import concurrent.futures
import logging
import random
import time
from pathlib import Path

import numpy as np
import pytest

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from test_app import free_port, pixels  # noqa: E402

import apg  # noqa: E402
from apg.app import ui  # noqa: E402

CLIENTS, REQUESTS, BUDGET_S = 8, 25, 90  # 8 clients x up to 25 requests each, for at most ~90 s
MAX_RSS_GROWTH_MB = 150
STATM = Path("/proc/self/statm")

GOOD = [dict(right_method=key, seed=seed) for seed, key in enumerate(apg.METHODS)] + [
    dict(right_method="apg", right_interval=next(iter(apg.INTERVALS)), seed=1),
    dict(left_method="mcfg", right_method="apg", right_norm_threshold=5, prompt="ship", seed=2),
    dict(right_method="apg", right_interval="custom", right_sigma_low=0.5, right_sigma_high=20, seed=3),
]
BAD = [
    (dict(steps=0), "steps must be in"),
    (dict(seed=-1), "seed must be in"),
    (dict(prompt="zebra"), "'zebra' is not a class"),
    (dict(right_method="apg", right_eta=2), r"Right side, η \(eta\) must be in"),  # the labels on screen
    (dict(right_interval="custom", right_sigma_low=3, right_sigma_high=1), "Right side, σ low must be below"),
    (dict(height=100), "height must be a multiple of 8"),
]
FAST = dict(steps=3, num_seeds=1)


def rss_mb() -> float:
    return int(STATM.read_text().split()[1]) * 4096 / 2**20


class ErrorRecords(logging.Handler):
    def __init__(self):
        super().__init__(logging.ERROR)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.mark.skipif(not STATM.exists(), reason="reads the server's memory from /proc (Linux)")
def test_soak_many_clients_good_and_bad_requests(capfd):
    demo = ui.build_demo()
    ui.launch(demo, server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    errors = ErrorRecords()
    logging.getLogger().addHandler(errors)
    try:
        alone = gradio_client.Client(demo.local_url, verbose=False, download_files=False)
        reference = []
        for settings in GOOD:  # each good request alone, before the soak
            left, right = alone.predict(**{**FAST, **settings}, api_name="/compare")[0]
            reference.append((pixels(left), pixels(right)))
        for _ in range(2):  # warm-up: Gradio's and torch's caches fill on the first requests
            alone.predict(**FAST, **GOOD[0], api_name="/compare")
        before, start = rss_mb(), time.monotonic()

        def client_run(index):
            rng, client = random.Random(index), gradio_client.Client(demo.local_url, verbose=False,
                                                                     download_files=False)
            done = []
            for _ in range(REQUESTS):
                if time.monotonic() - start > BUDGET_S:
                    break
                if rng.random() < 0.3:
                    settings, words = rng.choice(BAD)
                    with pytest.raises(Exception, match=words):
                        client.predict(**{**FAST, **settings}, api_name="/compare")
                    done.append("bad")
                else:
                    i = rng.randrange(len(GOOD))
                    left, right = client.predict(**FAST, **GOOD[i], api_name="/compare")[0]
                    assert np.array_equal(pixels(left), reference[i][0]), GOOD[i]
                    assert np.array_equal(pixels(right), reference[i][1]), GOOD[i]
                    done.append("good")
            return done

        with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
            done = [kind for result in pool.map(client_run, range(CLIENTS)) for kind in result]
        elapsed, growth = time.monotonic() - start, rss_mb() - before
    finally:
        logging.getLogger().removeHandler(errors)
        demo.close()
    stderr = capfd.readouterr().err
    with capfd.disabled():
        print(f"\nsoak: {len(done)} requests ({done.count('good')} good, {done.count('bad')} bad) from {CLIENTS} clients "
              f"in {elapsed:.0f} s; server RSS {before:.0f} MB -> {before + growth:.0f} MB ({growth:+.0f} MB)")
    assert done.count("good") >= 2 * CLIENTS and done.count("bad") >= CLIENTS  # the soak really ran
    assert not errors.records, [record.getMessage() for record in errors.records]
    assert "Traceback" not in stderr
    assert growth < MAX_RSS_GROWTH_MB
