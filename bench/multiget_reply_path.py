"""The proxy's multi-get reply path in-process, for counting its work (round five, issue 16).

Two shards' replies to a 10-key get (5 values of 100 B each) are parsed, checked against
their requests' shapes and joined in the client's key order (`SplitGet.poll`), N times, with
the compiled modules of the tree it runs from. Timings on a shared machine say little;
count the work instead, e.g. CPython's object allocations with a perf uprobe (the count of a
run with N=0 subtracted):

    perf probe -x $(python -c 'import sysconfig;print(sysconfig.get_config_var("LIBDIR"))')/libpython3.11.so.1.0 -a _PyObject_Malloc
    perf stat -e probe_libpython3:_PyObject_Malloc .venv/bin/python bench/multiget_reply_path.py 10000
    perf probe -d 'probe_libpython3:*'
"""

from __future__ import annotations

import sys
import time

from memring.protocol.reply_shapes import reply_shape
from memring.protocol.response_parser import ResponseParser
from memring.protocol.sentinels import NEED_DATA
from memring.proxy.direct_slots import DirectRead
from memring.proxy.slots import render
from memring.proxy.split_get import SplitGet


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
    keys = [b"key:%06d" % (i * 7919 % 10000) for i in range(10)]
    parts = [keys[0::2], keys[1::2]]  # two shards, interleaved as random keys are
    value = b"v" * 100
    requests = [b"get " + b" ".join(part) + b"\r\n" for part in parts]
    replies = [b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(value), value) for k in part)
               + b"END\r\n" for part in parts]
    expected = b"".join(b"VALUE %s 0 %d\r\n%s\r\n" % (k, len(value), value)
                        for k in keys) + b"END\r\n"
    parsers = [ResponseParser(), ResponseParser()]

    def once() -> object:
        slots = []
        for index in range(2):
            shape = reply_shape(requests[index])
            slot = DirectRead(True, 0.0, None, shape)
            slot.filter = render
            parser = parsers[index]
            parser.receive_data(replies[index])
            while (event := parser.next_event()) is not NEED_DATA:
                assert shape.accepts(event)
                slot.events.append(event)
            slot.done = True
            slots.append(slot)
        return SplitGet(keys, len(keys), list(slots), [len(part) for part in parts]).poll()

    assert once() == expected
    started = time.perf_counter()
    for _ in range(count):
        once()
    elapsed = time.perf_counter() - started
    print(f"{elapsed / max(count, 1) * 1e6:.2f} us per 10-key get's reply path ({count} runs)")


if __name__ == "__main__":
    main()
