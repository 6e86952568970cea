"""xensim: a simulated Xen host (xenstored, kernel drivers, QEMU, sysfs) for tests."""
