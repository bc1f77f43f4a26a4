"""vfio_ref: an executable reference model of the Linux VFIO group lifecycle.

Before and after Jason Gunthorpe's five-patch series "Update vfio_group to use the modern
cdev lifecycle" (Linux 5.16).  See README.md.
"""

__version__ = "0.2.9"

LEVELS: tuple[str, ...] = ("base", "p1", "p2", "p3", "p4", "p5")

__all__ = ["LEVELS", "__version__"]
