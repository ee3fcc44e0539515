from batch.scheduler import Unit, WorkQueue
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
