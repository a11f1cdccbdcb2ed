"""Pure processing: prepare, segment post-processing, measure, stats, rules. No I/O, Qt or GPU."""
