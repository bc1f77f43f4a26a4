"""Ablations: each removes one design decision of the series, to show why it is there.

An ablation is a mixin put in front of a level's class (and, for the two decisions that live
in the substrate, a switch on the kernel).  Each names the levels where the decision exists.
The explorer runs a scenario at an ablated level exactly as at the real one; a test shows,
for each ablation, the failure the explorer finds and the same scenario clean without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..kernel.atomic import atomic_read
from ..kernel.bug import WARN_ON
from ..kernel.cdev import cdev_device_del
from ..kernel.device import MAJOR, MKDEV, device_destroy, put_device
from ..kernel.iommu import iommu_group_unregister_notifier
from ..kernel.mutex import mutex_lock, mutex_unlock
from ..kernel.refcount import refcount_dec_and_mutex_lock, refcount_dec_and_test, refcount_inc
from ..kernel.shared import list_del, list_empty, list_for_each_entry_safe
from ..kernel.slab import kfree


class NoDeferredPut:
    """base without the deferred put: the notifier drops its reference directly.  If that
    is the last one, the release unregisters the notifier from the chain the callback is
    running on (rwsem held for read, taken for write)."""

    def vfio_group_schedule_put(self: Any, group: Any) -> None:
        self.vfio_group_put(group)


class RegisterNotifierUnderGroupLock:
    """vfio_create_group registers its iommu group notifier while holding vfio.group_lock
    (the kernel registers first, then locks).  Realised by telling the iommu layer to take
    the lock around the registration: the same lock order as moving the call."""

    def _ablation_setup(self: Any) -> None:
        self.k.state["ablation:register_notifier_under"] = self.vfio.group_lock


def _free_unbound_list_unlocked(self: Any, group: Any) -> None:
    """The base's release-time walk of the unbound list, without unbound_lock."""
    for unbound in list_for_each_entry_safe(group.unbound_list):
        list_del(unbound.unbound_next)
        kfree(self.k, unbound)


class UnboundCleanupInRelease:
    """Patches 1-4 with the unbound list freed in the release path, under vfio.group_lock and
    before the notifier is unregistered (where the base freed it), instead of after."""

    def vfio_group_unlock_and_free(self: Any, group: Any) -> None:
        _free_unbound_list_unlocked(self, group)
        super().vfio_group_unlock_and_free(group)  # type: ignore[misc]


class UnboundCleanupInReleaseP5:
    """Patch 5's vfio_group_put with the unbound list freed before the notifier is
    unregistered (instead of in the struct device's release)."""

    def vfio_group_put(self: Any, group: Any) -> None:
        k, vfio = self.k, self.vfio
        if not refcount_dec_and_mutex_lock(group.users, vfio.group_lock):
            return
        WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")
        WARN_ON(k, atomic_read(group.container_users), "atomic_read(&group->container_users)")
        WARN_ON(k, group.notifier.head, "group->notifier.head")
        _free_unbound_list_unlocked(self, group)  # ablation: moved here
        list_del(group.vfio_next)
        cdev_device_del(group.cdev, group.dev)
        mutex_unlock(vfio.group_lock)
        iommu_group_unregister_notifier(group.iommu_group, group.nb)
        put_device(group.dev)


class PlainDecThenLockP4:
    """Patch 4's vfio_group_put with the last decrement done before taking vfio.group_lock
    (refcount_dec_and_test, then mutex_lock) instead of refcount_dec_and_mutex_lock."""

    def vfio_group_put(self: Any, group: Any) -> None:
        k, vfio = self.k, self.vfio
        if not refcount_dec_and_test(group.users):
            return
        mutex_lock(vfio.group_lock)

        WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")
        WARN_ON(k, atomic_read(group.container_users), "atomic_read(&group->container_users)")
        WARN_ON(k, group.notifier.head, "group->notifier.head")

        device_destroy(vfio.class_, MKDEV(MAJOR(vfio.group_devt), group.minor))
        list_del(group.vfio_next)
        self.vfio_free_group_minor(group.minor)
        self.vfio_group_unlock_and_free(group)


class PlainDecThenLockP5:
    """Patch 5's vfio_group_put with a plain decrement before taking vfio.group_lock."""

    def vfio_group_put(self: Any, group: Any) -> None:
        k, vfio = self.k, self.vfio
        if not refcount_dec_and_test(group.users):
            return
        mutex_lock(vfio.group_lock)

        WARN_ON(k, not list_empty(group.device_list), "!list_empty(&group->device_list)")
        WARN_ON(k, atomic_read(group.container_users), "atomic_read(&group->container_users)")
        WARN_ON(k, group.notifier.head, "group->notifier.head")

        list_del(group.vfio_next)
        cdev_device_del(group.cdev, group.dev)
        mutex_unlock(vfio.group_lock)

        iommu_group_unregister_notifier(group.iommu_group, group.nb)
        put_device(group.dev)


class OpenRefcountInc:
    """Patch 5's open taking its reference with refcount_inc instead of
    refcount_inc_not_zero: an open racing the last put resurrects a dying group."""

    def vfio_group_try_get(self: Any, group: Any) -> bool:
        refcount_inc(group.users)
        return True


class CdevWithoutParentRef:
    """Patch 5 with a cdev that holds no reference on its struct device: nothing keeps the
    vfio_group's memory alive for an open file once the last put_device() has run."""

    def _ablation_setup(self: Any) -> None:
        self.k.state["cdev_parent_ref"] = False


@dataclass(frozen=True)
class Ablation:
    name: str
    summary: str
    levels: tuple[str, ...]
    mixins: dict[str, type]  # level -> mixin
    shows: str  # the scenario that shows the failure the decision prevents

    def mixin_for(self, level: str) -> type:
        return self.mixins[level]


ABLATIONS: dict[str, Ablation] = {
    a.name: a
    for a in (
        Ablation(
            "no_deferred_put",
            "base: the notifier puts its group reference directly instead of from a work item",
            ("base",),
            {"base": NoDeferredPut},
            "notifier_vs_release",
        ),
        Ablation(
            "register_notifier_under_group_lock",
            "vfio_create_group registers the iommu group notifier while holding vfio.group_lock",
            ("base", "p1", "p2", "p3", "p4", "p5"),
            {lv: RegisterNotifierUnderGroupLock for lv in ("base", "p1", "p2", "p3", "p4", "p5")},
            "notifier_vs_release",
        ),
        Ablation(
            "unbound_cleanup_in_release",
            "patch 1 and later: the unbound list is freed before the notifier is unregistered",
            ("p1", "p2", "p3", "p4", "p5"),
            {
                "p1": UnboundCleanupInRelease,
                "p2": UnboundCleanupInRelease,
                "p3": UnboundCleanupInRelease,
                "p4": UnboundCleanupInRelease,
                "p5": UnboundCleanupInReleaseP5,
            },
            "notifier_vs_release",
        ),
        Ablation(
            "plain_dec_then_lock",
            "patch 4 and later: the last put decrements, then takes vfio.group_lock",
            ("p4", "p5"),
            {"p4": PlainDecThenLockP4, "p5": PlainDecThenLockP5},
            "lookup_vs_last_put",
        ),
        Ablation(
            "open_refcount_inc",
            "patch 5: open takes its reference with refcount_inc instead of refcount_inc_not_zero",
            ("p5",),
            {"p5": OpenRefcountInc},
            "open_vs_last_put",
        ),
        Ablation(
            "cdev_without_parent_ref",
            "patch 5: the cdev holds no reference on its struct device",
            ("p5",),
            {"p5": CdevWithoutParentRef},
            "open_vs_last_put",
        ),
    )
}
