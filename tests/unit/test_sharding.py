import pytest
from hypothesis import given
from hypothesis import strategies as st

from ray_diffusion.sharding import micro_batches, shard_bounds, shard_prompts


def test_three_items_two_shards_like_accelerate_docstring():
    assert shard_prompts(["A", "B", "C"], 2, 0).items == ["A", "B"]
    assert shard_prompts(["A", "B", "C"], 2, 1).items == ["C"]
    padded = shard_prompts(["A", "B", "C"], 2, 1, apply_padding=True)
    assert padded.items == ["C", "C"]
    assert padded.padding == (False, True)


def test_more_shards_than_items_gives_empty_shards_not_duplicates():
    shards = [shard_prompts([1, 2], 4, k).items for k in range(4)]
    assert shards == [[1], [2], [], []]


def test_padding_repeats_the_last_input_and_is_flagged():
    shard = shard_prompts([1, 2], 4, 3, apply_padding=True)
    assert shard.items == [2]
    assert shard.padding == (True,)
    assert shard.num_padded == 1
    assert shard_prompts([1, 2, 3, 4, 5], 3, 0, apply_padding=True).items == [1, 2]
    assert shard_prompts([1, 2, 3, 4, 5], 3, 2, apply_padding=True).items == [5, 5]


def test_dict_of_lists_is_split_per_key_without_mutating_input():
    data = {"prompt": ["a", "b", "c", "d", "e"], "seed": [1, 2, 3, 4, 5]}
    before = {k: list(v) for k, v in data.items()}
    shard = shard_prompts(data, 2, 1, apply_padding=True)
    assert shard.items == {"prompt": ["d", "e", "e"], "seed": [4, 5, 5]}
    assert shard.padding == (False, False, True)
    assert data == before


def test_dict_with_unequal_lengths_is_refused():
    with pytest.raises(ValueError, match="same length"):
        shard_prompts({"a": [1, 2], "b": [1]}, 2, 0)


@pytest.mark.parametrize("num_shards, index", [(0, 0), (2, 2), (2, -1)])
def test_bad_shard_arguments_are_refused(num_shards, index):
    with pytest.raises(ValueError):
        shard_bounds(5, num_shards, index)


@given(n=st.integers(0, 300), num_shards=st.integers(1, 70))
def test_shards_partition_the_input(n, num_shards):
    items = list(range(n))
    shards = [shard_prompts(items, num_shards, k) for k in range(num_shards)]
    assert [x for s in shards for x in s.items] == items
    sizes = [len(s.items) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    r = n % num_shards
    # the first r shards are the larger ones
    assert all(size == n // num_shards + 1 for size in sizes[:r])
    assert all(size == n // num_shards for size in sizes[r:])
    assert all(s.padding == (False,) * len(s.items) for s in shards)


@given(n=st.integers(1, 200), num_shards=st.integers(1, 40))
def test_padded_shards_have_equal_length_and_drop_back_to_input(n, num_shards):
    items = list(range(n))
    shards = [shard_prompts(items, num_shards, k, apply_padding=True) for k in range(num_shards)]
    target = n // num_shards + (1 if n % num_shards else 0)
    assert {len(s.items) for s in shards} == {target}
    real = [x for s in shards for x, pad in zip(s.items, s.padding) if not pad]
    assert real == items


@given(n=st.integers(0, 120), num_shards=st.integers(2, 9), data=st.data())
def test_matches_accelerate_split_between_processes(n, num_shards, data, monkeypatch_accelerate):
    index = data.draw(st.integers(0, num_shards - 1))
    items = [f"p{i}" for i in range(n)]
    state = monkeypatch_accelerate(num_shards, index)
    with state.split_between_processes(items) as theirs:
        assert shard_prompts(items, num_shards, index).items == theirs
    if n:
        with state.split_between_processes(items, apply_padding=True) as theirs_padded:
            ours = shard_prompts(items, num_shards, index, apply_padding=True)
            if len(theirs) if False else True:
                pass
            # accelerate pads a non-empty shard with its own last item, as we do; it cannot pad an empty one.
            if ours.stop > ours.start:
                assert ours.items == theirs_padded


def test_micro_batches_cut_a_global_grid():
    assert micro_batches(7, 3) == [range(0, 3), range(3, 6), range(6, 7)]
    assert micro_batches(0, 3) == []
    with pytest.raises(ValueError, match="batch_size"):
        micro_batches(3, 0)


@pytest.fixture(scope="module")
def monkeypatch_accelerate():
    """Make accelerate's singleton PartialState believe it is process k of n."""
    from accelerate import PartialState

    state = PartialState(cpu=True)
    saved = (state.num_processes, state.process_index)

    def set_rank(n, k):
        state.__dict__["num_processes"] = n
        state.__dict__["process_index"] = k
        return state

    yield set_rank
    state.__dict__["num_processes"], state.__dict__["process_index"] = saved
