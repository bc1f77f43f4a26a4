"""Each ablation removes one design decision of the series; the explorer must find the
failure that decision prevents, and the same scenario must be clean without the ablation."""

from __future__ import annotations

import os

import pytest

from vfio_ref.scenarios import Verdict, run
from vfio_ref.vfio import REVIEW_FIX_LEVELS, ablations_table

from .verdicts import ABLATION_BOUND, ablated, fixed

# The cross-checks at two preemptions (and the plain search beside them) run with
# VFIO_REF_LONG=1.
BOUND = ABLATION_BOUND
LONG = os.environ.get("VFIO_REF_LONG") == "1"
verdict = ablated  # every ablation's verdict, computed once per test run (verdicts.py)


def heads(v: Verdict, kind: str) -> list[str]:
    return [f.detail.splitlines()[0] for f in v.findings if f.kind == kind]


def test_the_ablations_are_the_ones_the_design_names() -> None:
    assert set(ablations_table()) == {
        "no_deferred_put",
        "register_notifier_under_group_lock",
        "unbound_cleanup_in_release",
        "plain_dec_then_lock",
        "open_refcount_inc",
        "cdev_without_parent_ref",
    }


@pytest.mark.parametrize(
    ("name", "level"),
    [(n, lv) for n, a in sorted(ablations_table().items()) for lv in a.levels],
)
def test_without_the_ablation_the_scenario_that_shows_it_is_clean(name: str, level: str) -> None:
    assert fixed(ablations_table()[name].shows, level).clean  # the report's verdict


def test_no_deferred_put_unregisters_the_notifier_from_inside_its_own_call_chain() -> None:
    """The base's notifier puts its reference from a work item because a direct put can be
    the last one: the release then unregisters the notifier while its callback runs with the
    chain's rwsem held for read."""
    v = verdict("notifier_vs_release", "base", "no_deferred_put")
    assert v.kinds() == ["deadlock", "lockdep"]
    assert heads(v, "lockdep") == [
        "lockdep: possible recursive locking detected (write after read) (&group->notifier.rwsem) "
        "in blocking_notifier_chain_unregister [T2]"
    ]
    assert all("blocking_notifier_chain_unregister" in d for d in heads(v, "deadlock"))
    assert all(f.schedule != "-" for f in v.findings)  # only when T2's callback races the unbind


def test_registering_the_notifier_under_the_group_lock_inverts_the_lock_order_at_the_base() -> None:
    v = verdict("notifier_vs_release", "base", "register_notifier_under_group_lock")
    assert v.kinds() == ["lockdep"]
    (d,) = heads(v, "lockdep")
    assert "circular locking dependency" in d
    assert "(&group->notifier.rwsem -> &vfio.group_lock)" in d


@pytest.mark.parametrize("level", ["p1", "p2", "p3", "p4", "p5"])
def test_after_patch_1_the_notifier_takes_no_group_lock_so_the_order_no_longer_matters(level: str) -> None:
    assert verdict("notifier_vs_release", level, "register_notifier_under_group_lock").clean


@pytest.mark.parametrize("level", ["p1", "p2", "p3", "p4", "p5"])
def test_freeing_the_unbound_list_before_unregistering_the_notifier_races_the_callback(level: str) -> None:
    """Patch 1 stops the notifier holding a group reference, so the release can run while a
    callback walks the unbound list: the list must be freed only after unregistering."""
    v = verdict("notifier_vs_release", level, "unbound_cleanup_in_release")
    assert v.kinds() == ["data-race"]
    for d in heads(v, "data-race"):
        assert "group->unbound_list" in d
        assert "vfio_iommu_group_notifier" in d and "_free_unbound_list_unlocked" in d


@pytest.mark.parametrize("level", ["p4", "p5"])
def test_a_plain_decrement_then_lock_lets_a_lookup_revive_a_dying_group(level: str) -> None:
    """Between the decrement to zero and taking vfio.group_lock, a lookup finds the group on
    the list and increments a zero refcount: refcount_t's WARN, then use after free."""
    v = verdict("lookup_vs_last_put", level, "plain_dec_then_lock")
    assert {"use-after-free", "warn"} <= set(v.kinds())
    assert any("refcount_t: addition on 0; use-after-free." in d for d in heads(v, "warn"))


def test_open_with_refcount_inc_revives_a_group_whose_users_reached_zero() -> None:
    v = verdict("open_vs_last_put", "p5", "open_refcount_inc")
    assert v.kinds() == ["warn"]
    (d,) = heads(v, "warn")
    assert d.startswith("WARN in refcount_warn_saturate: refcount_t: addition on 0; use-after-free.")
    assert "vfio_group_fops_open" in d


def test_a_cdev_without_a_reference_on_its_device_lets_an_open_use_a_freed_group() -> None:
    """The question asked in review: what keeps the group alive after cdev_device_del()
    while an open is in flight?  The cdev's reference on its parent device."""
    v = verdict("open_vs_last_put", "p5", "cdev_without_parent_ref")
    assert v.kinds() == ["use-after-free"]
    assert all("(struct vfio_group)" in d for d in heads(v, "use-after-free"))
    assert any("cdev_put" in d for d in heads(v, "use-after-free"))


def test_an_ablation_finding_replays_from_its_schedule() -> None:
    v = verdict("open_vs_last_put", "p5", "open_refcount_inc")
    f = v.findings[0]
    again = run("open_vs_last_put", "p5", ablation="open_refcount_inc", replay=f.schedule, traces=False)
    assert not again.complete  # one schedule is not a search
    assert [g.key for g in again.findings] == [f.key]


@pytest.mark.parametrize(
    ("name", "level"),
    [(n, lv) for n, a in sorted(ablations_table().items()) for lv in sorted({a.levels[0], a.levels[-1]})],
)
def test_the_reduced_search_finds_the_finding_kinds_the_plain_search_finds(name: str, level: str) -> None:
    """The reduction is checked, not trusted: on each ablation's scenario the plain search
    and the reduced one report the same findings over the same space (one preemption; two,
    and the unbounded search where it finishes, with VFIO_REF_LONG=1), the reduced one in
    no more schedules."""
    shows = ablations_table()[name].shows
    fixes = level in REVIEW_FIX_LEVELS
    for bound in (1, 2) if LONG else (BOUND,):
        # No cap: a capped search proves nothing here.  At two preemptions the plain search of
        # register_notifier_under_group_lock at the base passes the default cap of 100,000
        # schedules (221,452, about 5 minutes on its own), and this test failed on the cap.
        plain = run(shows, level, ablation=name, review_fixes=fixes, bound=bound, reduction=False, traces=False,
                    max_schedules=None)
        reduced = run(
            shows, level, ablation=name, review_fixes=fixes, bound=bound, traces=False, check_reduction=LONG,
            max_schedules=None,
        )
        assert plain.complete and reduced.complete
        assert {f.ident for f in reduced.findings} == {f.ident for f in plain.findings}
        assert reduced.stats[0].schedules <= plain.stats[0].schedules
        assert reduced.check is None or reduced.check.agree


def test_with_one_preemption_the_reduced_search_still_finds_no_deferred_puts_deadlock() -> None:
    """The deadlock needs T2 to run while T1 holds unbound_lock, so that T2 blocks inside
    its callback holding a group reference: not a reversal of a race but a switch inside a
    critical section.  The old DPOR under a preemption bound missed it; the restricted sleep
    sets cannot (they prune only what an equivalent schedule within the bound covers)."""
    plain = run("notifier_vs_release", "base", ablation="no_deferred_put", bound=1, reduction=False, traces=False)
    reduced = run("notifier_vs_release", "base", ablation="no_deferred_put", bound=1, traces=False)
    assert plain.kinds() == ["deadlock", "lockdep"]
    assert reduced.kinds() == plain.kinds()
    assert reduced.stats[0].schedules <= plain.stats[0].schedules
