"""Tasks, suites and the demo: the compiler run end to end on real recorded data."""
