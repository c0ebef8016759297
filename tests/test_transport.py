"""The socket factory's helpers: the cross-thread inbox and the bounded drain."""

from __future__ import annotations

import threading

import zmq

from swarmmesh import transport


def test_inbox_wakes_a_poller_and_runs_callbacks_in_order_surviving_a_failing_one():
    inbox = transport.Inbox()
    poller = zmq.Poller()
    poller.register(inbox.fd, zmq.POLLIN)
    ran: list[int] = []
    poster = threading.Thread(target=lambda: [inbox.post(lambda i=i: ran.append(i)) for i in range(3)])
    poster.start()
    assert dict(poller.poll(5000)).get(inbox.fd)
    poster.join(5)  # the rest is posted from here, after the thread's three
    inbox.post(lambda: 1 / 0)
    inbox.post(lambda: ran.append(9))
    while len(ran) < 4:
        poller.poll(5000)
        inbox.run_pending()
    assert ran == [0, 1, 2, 9] and inbox.empty()
    assert not dict(poller.poll(0))  # the wake-up bytes were consumed
    inbox.close()
    inbox.post(lambda: ran.append(10))  # after close: dropped, not an error
    assert ran == [0, 1, 2, 9]


def test_drain_is_bounded_and_stops_when_empty():
    ctx = zmq.Context()
    pull = transport.pull(ctx, "tcp://127.0.0.1:*")
    push = transport.push(ctx, pull.getsockopt(zmq.LAST_ENDPOINT).decode())
    try:
        for i in range(5):
            push.send(bytes([i]))
        got: list[bytes] = []
        while len(got) < 3:
            pull.poll(5000)
            transport.drain(pull, got.append, 3 - len(got), multipart=False)
        assert len(got) == 3  # the limit holds even with more waiting
        while len(got) < 5:
            pull.poll(5000)
            transport.drain(pull, got.append, 100, multipart=False)
        assert got == [bytes([i]) for i in range(5)]
        transport.drain(pull, got.append, 100, multipart=False)  # nothing waiting: returns at once
    finally:
        push.close(0)
        pull.close(0)
        ctx.term()
