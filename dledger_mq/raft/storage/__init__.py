"""Storage: the CommitLog on a ``Disk`` (real files; the simulated disks apart)."""
