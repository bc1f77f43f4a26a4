"""Patch 2 is a pure refactor: any sequence of operations gives the same observable results
at p1 and at p2 (return codes, WARNs, faults, what leaks)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from vfio_ref.kernel import KernelFault
from vfio_ref.kernel.cdev import File
from vfio_ref.kernel.errno import IS_ERR
from vfio_ref.kernel.iommu import iommu_group_get
from vfio_ref.vfio.base import VFIO_IOMMU

from .machine import A, B, machine

DEVICES = (A, B)
Op = tuple[Any, ...]

ops = st.one_of(
    st.tuples(st.just("bind"), st.sampled_from(DEVICES), st.sampled_from(["vfio-pci", "pci-stub", "e1000e"])),
    st.tuples(st.just("unbind"), st.sampled_from(DEVICES)),
    st.tuples(st.just("open"), st.sampled_from(DEVICES)),
    st.tuples(st.just("use"), st.sampled_from(DEVICES)),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("ext_get"), st.integers(0, 3)),
    st.tuples(st.just("ext_put"), st.integers(0, 3)),
    st.tuples(st.just("lookup"), st.sampled_from(DEVICES)),
    st.tuples(st.just("create_race"),),
)


def transcript(level: str, seq: list[Op]) -> list[Any]:
    """Run ``seq`` at ``level`` and return everything a user could observe."""
    m = machine(level, devices=DEVICES)
    v, p = m.v, m.p
    files: list[File] = []
    ext: list[Any] = []
    out: list[Any] = []
    try:
        for op in seq:
            kind = op[0]
            if kind == "bind":
                out.append(p.bind(op[1], op[2]))
            elif kind == "unbind":
                if p.dev(op[1]).driver is not None and p.dev(op[1]).driver.name == "vfio-pci" and files:
                    out.append("skip")  # would wait for the user to close the group (not modelled here)
                    continue
                p.unbind(op[1])
                out.append("unbound")
            elif kind in ("open", "use"):
                f = p.open_group(op[1])
                if isinstance(f, File):
                    files.append(f)
                    if kind == "use":
                        c = p.open_container()
                        assert isinstance(c, File)
                        files.append(c)
                        out.append(("use", p.set_container(f, c)))
                    else:
                        out.append("file")
                else:
                    out.append(f)
            elif kind == "close":
                if files:
                    p.close(files.pop(op[1] % len(files)))
                    out.append("closed")
            elif kind == "ext_get":
                if files:
                    f = files[op[1] % len(files)]
                    g = p.external_user_get(f)
                    out.append(g.err if IS_ERR(g) else "ext")
                    if not IS_ERR(g):
                        ext.append(g)
            elif kind == "ext_put":
                if ext:
                    p.external_user_put(ext.pop(op[1] % len(ext)))
                    out.append("ext_put")
            elif kind == "lookup":
                g = v.vfio_group_get_from_dev(p.dev(op[1]))
                out.append(g is not None)
                if g is not None:
                    v.vfio_group_put(g)
            elif kind == "create_race":
                # the loser of a creation race, by hand: its lookup missed, the group exists now
                ig = iommu_group_get(p.dev(A))
                g = v.vfio_create_group(ig, VFIO_IOMMU)
                out.append("created" if not IS_ERR(g) else g.err)
                if not IS_ERR(g):
                    v.vfio_group_put(g)
        p.teardown()
        out.append(("leaks", m.leaks()))
    except KernelFault as e:
        out.append((type(e).__name__, e.message.splitlines()[0].split(" [")[0]))
    out.append(("warnings", m.warnings()))
    return out


@settings(max_examples=60, deadline=None)
@given(st.lists(ops, max_size=12))
def test_p2_behaves_exactly_as_p1(seq: list[Op]) -> None:
    assert transcript("p2", seq) == transcript("p1", seq)


def test_the_list_search_now_lives_in_one_helper() -> None:
    m = machine("p2")
    m.p.bind(A)
    ig = m.p.groups["g0"]
    v = m.v
    v.vfio.group_lock.lock()
    try:
        g = v._VfioP2__vfio_group_get_from_iommu(ig)  # the helper expects the lock held
    finally:
        v.vfio.group_lock.unlock()
    assert g is not None and g.iommu_group is ig
    assert g.kref.kref_read() == 2  # it took a reference
    v.vfio_group_put(g)
