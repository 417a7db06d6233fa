"""SSE framing: what the worker writes is what the decoder reads back, however it is split."""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from crosszone.dataplane.sse import DONE, SSEDecoder, encode_event


def test_encode_event_is_one_data_line_and_a_blank_line() -> None:
    raw = encode_event({"choices": [{"delta": {"content": "a\nb"}}]})
    assert raw.startswith(b"data: {") and raw.endswith(b"\n\n")
    assert raw.count(b"\n") == 2  # the newline inside the content is JSON-escaped


def test_decoder_handles_crlf_comments_and_multiline_data() -> None:
    dec = SSEDecoder()
    events = list(dec.feed(b": keep-alive\r\n\r\ndata: one\r\ndata: two\r\n\r\ndata:x\n\n"))
    assert events == [b"one\ntwo", b"x"]
    assert not dec.pending


def test_decoder_reports_a_cut_event_as_pending() -> None:
    dec = SSEDecoder()
    assert list(dec.feed(b'data: {"a": 1}\n\ndata: {"b"')) == [b'{"a": 1}']
    assert dec.pending


payloads = st.lists(st.dictionaries(st.text(max_size=5), st.text(max_size=20), max_size=3),
                    min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(payloads, st.lists(st.integers(min_value=0, max_value=400), max_size=10))
def test_any_split_of_a_stream_decodes_to_the_same_events(events: list[dict[str, str]],
                                                          cuts: list[int]) -> None:
    stream = b"".join(encode_event(e) for e in events) + DONE
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    dec = SSEDecoder()
    out = [data for piece in pieces for data in dec.feed(piece)]
    assert out[-1] == b"[DONE]"
    assert [orjson.loads(d) for d in out[:-1]] == events
    assert not dec.pending
