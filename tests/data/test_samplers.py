"""The training sampler: a resumable seeded permutation, optionally in length-grouped batches."""

from __future__ import annotations

import random

from hhalign.data.samplers import ResumableShuffle

_RNG = random.Random(1)
LENGTHS = [_RNG.randint(10, 500) for _ in range(200)]


def _batches(sampler: ResumableShuffle, batch_size: int) -> list[list[int]]:
    order = list(sampler)
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _padding(batches: list[list[int]]) -> int:
    return sum(max(LENGTHS[i] for i in b) * len(b) - sum(LENGTHS[i] for i in b) for b in batches)


def test_grouped_epoch_is_a_permutation_split_across_processes():
    shares = [ResumableShuffle(200, 2, rank, seed=3, lengths=LENGTHS, batch_size=8) for rank in (0, 1)]
    orders = [list(s) for s in shares]
    assert len(orders[0]) == len(orders[1]) == len(shares[0]) == 100
    assert sorted(orders[0] + orders[1]) == list(range(200))
    for share in shares:
        share.set_epoch(1)
    assert [list(s) for s in shares] != orders  # a new permutation every epoch


def test_grouping_cuts_padding():
    grouped = _batches(ResumableShuffle(200, 1, 0, seed=0, lengths=LENGTHS, batch_size=8), 8)
    shuffled = _batches(ResumableShuffle(200, 1, 0, seed=0), 8)
    assert _padding(grouped) < 0.3 * _padding(shuffled)


def test_grouped_sampler_resumes_where_it_stopped():
    sampler = ResumableShuffle(200, 1, 0, seed=0, lengths=LENGTHS, batch_size=8)
    sampler.set_epoch(2)
    full = list(sampler)
    stream = iter(sampler)
    seen = [next(stream) for _ in range(37)]
    resumed = ResumableShuffle(200, 1, 0, seed=0, lengths=LENGTHS, batch_size=8)
    resumed.load_state_dict(sampler.state_dict())
    assert seen + list(resumed) == full


def test_skipping_batches_gives_the_rest_of_the_first_epoch_and_a_whole_second():
    full = ResumableShuffle(200, 1, 0, seed=0, lengths=LENGTHS, batch_size=8)
    first = _batches(full, 8)
    skipped = ResumableShuffle(200, 1, 0, seed=0, lengths=LENGTHS, batch_size=8, skip_first=5 * 8)
    rest = _batches(skipped, 8)
    assert rest == first[5:]
    assert not {i for b in first[:5] for i in b} & {i for b in rest for i in b}  # disjoint from the first 5
    skipped.set_epoch(1)
    full.set_epoch(1)
    assert list(skipped) == list(full)  # only the first epoch is cut


def test_a_position_saved_at_an_epochs_end_does_not_skip_the_next_epoch():
    """A checkpoint written after an epoch's last batch holds that epoch fully yielded; Lightning resumes in the
    next epoch (``set_epoch(1)``), which must then run whole, as it would have without the stop."""
    from hhalign.data.samplers import ResumableShuffle

    uninterrupted = ResumableShuffle(10, 2, 0, seed=3)
    uninterrupted.set_epoch(1)
    expected = list(uninterrupted)
    resumed = ResumableShuffle(10, 2, 0, seed=3)
    resumed.load_state_dict({"epoch": 0, "yielded": 5})
    resumed.set_epoch(1)
    assert list(resumed) == expected and len(expected) == 5
    mid_epoch = ResumableShuffle(10, 2, 0, seed=3)
    mid_epoch.load_state_dict({"epoch": 1, "yielded": 2})
    mid_epoch.set_epoch(1)
    assert list(mid_epoch) == expected[2:]  # a position inside the epoch still continues there
