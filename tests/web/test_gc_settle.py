"""arena.gc_settle: a web process freezes its long-lived objects after start-up and once after warming up."""

from __future__ import annotations

import gc

from django.core.signals import request_finished

from arena import gc_settle


def test_settling_freezes_what_is_alive_and_again_after_the_warm_up():
    try:
        gc.unfreeze()
        gc_settle.settle_after(3)
        first = gc.get_freeze_count()
        assert first > 0
        kept = [[] for _ in range(1000)]  # objects made while warming up
        for _ in range(2):
            request_finished.send(sender=None)
        # (the count also falls as frozen objects die, so it is compared with a margin)
        assert gc.get_freeze_count() < first + len(kept) // 2  # not yet
        request_finished.send(sender=None)
        assert gc.get_freeze_count() > first + len(kept) // 2  # the third request's end froze them
        settled = gc.get_freeze_count()
        more = [[] for _ in range(1000)]
        request_finished.send(sender=None)  # and only once: the counter is disconnected
        assert gc.get_freeze_count() < settled + len(more) // 2
    finally:
        request_finished.disconnect(gc_settle._count, dispatch_uid="arena-gc-settle")
        gc.unfreeze()


def test_garbage_is_collected_before_freezing():
    class Node:
        pass

    gc.unfreeze()
    try:
        a, b = Node(), Node()
        a.other, b.other = b, a  # a cycle: garbage once the names are gone
        alive_before = {id(o) for o in gc.get_objects() if type(o) is Node}
        assert alive_before
        del a, b
        gc_settle.settle()
        assert not [o for o in gc.get_objects(generation=None) if type(o) is Node]
    finally:
        gc.unfreeze()
