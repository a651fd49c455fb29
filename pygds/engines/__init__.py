"""I/O engines behind pygds.File: posix, cufile, hipfile."""
