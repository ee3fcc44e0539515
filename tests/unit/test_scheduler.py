from batch.scheduler import Unit, WorkQueue, group_limit
from ray_diffusion.sharding import shard_prompts


def units(n):
    return [Unit(uid=i, tasks=(i,)) for i in range(n)]


def drain(q, w):
    got = []
    while (u := q.next_for(w)) is not None:
        got.append(u.uid)
    return got


def test_workers_start_on_their_split_between_processes_shard():
    q = WorkQueue(units(10), 3)
    for w in range(3):
        first = q.next_for(w)
        assert first.uid == shard_prompts(list(range(10)), 3, w).items[0]


def test_static_split_without_stealing():
    q = WorkQueue(units(7), 2, steal=False)
    assert drain(q, 1) == [4, 5, 6]
    assert q.next_for(1) is None
    assert drain(q, 0) == [0, 1, 2, 3]


def test_idle_worker_steals_from_the_tail_of_the_largest_shard():
    q = WorkQueue(units(12), 3)  # shards 0-3, 4-7, 8-11
    assert drain(q, 2)[:4] == [8, 9, 10, 11]
    q2 = WorkQueue(units(12), 3)
    drain_own = [q2.next_for(2).uid for _ in range(4)]
    assert drain_own == [8, 9, 10, 11]
    q2.next_for(0)  # shard 0 now has 3 left, shard 1 has 4
    assert q2.next_for(2).uid == 7  # tail of the largest (shard 1)
    assert q2.next_for(1).uid == 4  # the victim keeps its own order


def test_every_unit_is_handed_out_exactly_once_with_stealing():
    q = WorkQueue(units(50), 4)
    seen = []
    w = 0
    while q.queued():
        u = q.next_for(w % 4)
        if u is not None:
            seen.append(u.uid)
        w += 1 if w % 3 else 2  # uneven polling
    assert sorted(seen) == list(range(50))


def test_released_shard_is_orphaned_and_taken_first_even_without_stealing():
    q = WorkQueue(units(6), 2, steal=False)
    q.next_for(0)
    q.release_shard(0)  # worker 0 died
    assert [q.next_for(1).uid for _ in range(2)] == [1, 2]
    assert drain(q, 1) == [3, 4, 5]


def test_multi_task_unit_is_retried_whole_once_then_split():
    q = WorkQueue([Unit(uid=0, tasks=(0, 1, 2))], 1)
    q.next_for(0)
    assert [u.tasks for u in q.fail(Unit(uid=0, tasks=(0, 1, 2)), "x")] == [(0, 1, 2)]
    u = q.next_for(0)
    singles = q.fail(u, "again")
    assert [s.tasks for s in singles] == [(0,), (1,), (2,)]
    assert len({s.uid for s in singles}) == 3


def test_single_task_fails_for_good_after_max_retries():
    q = WorkQueue([Unit(uid=0, tasks=(5,))], 1, max_item_retries=2)
    u = q.next_for(0)
    for attempt in range(2):
        assert q.fail(u, f"e{attempt}") == [u]
        assert q.next_for(0) is u
    assert q.fail(u, "e2") == []
    assert q.failed == [u] and u.errors == ["e0", "e1", "e2"]
    assert q.queued() == 0


def test_added_worker_steals():
    q = WorkQueue(units(4), 1)
    w = q.add_worker()
    assert q.next_for(w).uid == 3


def test_groups_take_units_in_next_for_order():
    q = WorkQueue(units(12), 2)  # shards 0-5, 6-11
    assert [u.uid for u in q.next_group(0, 4)] == [0, 1, 2, 3]
    assert [u.uid for u in q.next_group(1, 6)] == [6, 7, 8, 9, 10, 11]
    # worker 1 is out of its shard: it steals from the tail of shard 0
    assert [u.uid for u in q.next_group(1, 3)] == [5, 4]
    assert q.next_group(0, 3) == [] and q.queued() == 0


def test_isolated_unit_always_goes_alone():
    q = WorkQueue(units(6), 1)
    first = q.next_group(0, 3)
    for u in first:
        q.requeue(u, isolate=True)  # their call crashed its worker
    got = [[u.uid for u in q.next_group(0, 3)] for _ in range(3)]
    assert got == [[0], [1], [2]]
    assert [u.uid for u in q.next_group(0, 3)] == [3, 4, 5]


def test_group_stops_before_an_isolated_unit():
    us = units(4)
    q = WorkQueue(us, 1)
    q.next_group(0, 4)
    q.requeue(us[0])
    q.requeue(us[1], isolate=True)
    q.requeue(us[2])
    assert [u.uid for u in q.next_group(0, 4)] == [0]
    assert [u.uid for u in q.next_group(0, 4)] == [1]
    assert [u.uid for u in q.next_group(0, 4)] == [2]


def test_group_limit_fills_the_target_then_shrinks_for_the_tail():
    # 0.1 s micro-batches, 0.5 s calls: 5 per call while plenty is queued
    assert group_limit(0.5, 0.1, 32, queued=1000, workers=4, calls_per_worker=2) == 5
    assert group_limit(0.5, 0.001, 32, queued=10_000, workers=4, calls_per_worker=2) == 32  # capped
    # near the end: 8 calls share 48 micro-batches, 6 each, and take half of that
    assert group_limit(0.5, 0.1, 32, queued=48, workers=4, calls_per_worker=2) == 3
    assert group_limit(0.5, 0.1, 32, queued=20, workers=4, calls_per_worker=2) == 1


def test_group_limit_is_one_when_off_untimed_or_slow():
    assert group_limit(0.0, 0.1, 32, 1000, 4, 2) == 1  # call_target_s = 0
    assert group_limit(0.5, None, 32, 1000, 4, 2) == 1  # nothing timed yet
    assert group_limit(0.5, 2.0, 32, 1000, 4, 2) == 1  # a micro-batch alone exceeds the target
    assert group_limit(0.5, 0.1, 1, 1000, 4, 2) == 1  # Serve fleet: one per call
